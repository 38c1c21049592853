"""cluster.demo's ground truth (no Ray, tiny random models: seconds): the truth folder holds each demo photo's person
in each style, the batch job's gallery gets a ground-truth column per style, and the summary's fidelity table has
a baseline G* and an SC&PC G' row per style whose numbers are recomputed here from the files."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from cluster.demo import (FIDELITY_ROWS, PHOTO_SEED, TINY_MODEL_ARGS, batch_entrypoint, fidelity_lines,
                          ground_truth_fidelity, write_photos, write_truths)
from fstrain import layout
from fstrain.data import storage
from fstrain.data.images import decode_pixels

REPO = Path(__file__).resolve().parents[1]
STYLES = ("cartoon", "anime")
SIZE = 32


def _pixels(uri: str) -> np.ndarray:
    return decode_pixels(storage.read_bytes(uri), uri)


def test_truth_folder_holds_each_photos_person_in_each_style_under_the_photos_key(tmp_path):
    from batch.stylize import list_inputs
    from fstrain.data.synthetic import identity_rng, render, sample_identity

    root = str(tmp_path)
    write_photos(layout.demo_photos(root), count=3, size=SIZE)
    write_truths(layout.demo_truth(root), count=3, size=SIZE, styles=STYLES)
    keys = [item["key"] for item in list_inputs(layout.demo_photos(root))]
    assert len(keys) == 3
    for style in STYLES:
        for index, key in enumerate(keys):
            truth = _pixels(storage.join(layout.demo_truth(root), style, key))
            # A direct render of the photo's person (identity `index` of the photo seed) in its view and the style.
            person = sample_identity(identity_rng(PHOTO_SEED, index), f"s{PHOTO_SEED}-{index:06d}")
            image, _ = render(person, _view(PHOTO_SEED, index), style, SIZE)
            np.testing.assert_array_equal(truth, np.asarray(image.convert("RGB")))
            other = sample_identity(identity_rng(PHOTO_SEED, index + 1), "other")
            image, _ = render(other, _view(PHOTO_SEED, index), style, SIZE)
            assert np.abs(truth.astype(int) - np.asarray(image.convert("RGB"))).mean() > 1.0


def _view(seed: int, index: int):
    from fstrain.data.synthetic import sample_view
    from fstrain.data.synthetic.params import view_rng

    return sample_view(view_rng(seed, index, True), aligned=True)


def test_the_demos_batch_job_gets_the_truth_folder_and_its_gallery_a_ground_truth_column_per_style(tmp_path):
    from batch import manifest
    from batch.gallery import write_gallery
    from batch.stages import JobSpec, encode_image, output_uri, thumbnail, thumbnail_uri
    from batch.stylize import list_inputs

    root = str(tmp_path)
    photos, truth, out = layout.demo_photos(root), layout.demo_truth(root), layout.demo_stylized(root)
    command = batch_entrypoint(root, photos, truth, out)
    assert command[command.index("--truth") + 1] == truth and command[command.index("--input") + 1] == photos
    write_photos(photos, count=2, size=SIZE)
    write_truths(truth, count=2, size=SIZE, styles=STYLES)
    # The batch job's records for these photos (outputs stand in for G'(E(photo)): the photo itself).
    inputs = list_inputs(photos)
    spec = JobSpec(input=photos, output=out, job_id="demo", styles=list(STYLES), size=SIZE, generator_uris={},
                   encoder_uri="", thumbnail_keys=[item["key"] for item in inputs])
    records = []
    for item in inputs:
        pixels = _pixels(item["uri"])
        storage.write_bytes(thumbnail_uri(spec, item["key"], "input"), thumbnail(pixels, spec.thumbnail_size))
        outputs = {}
        for style in STYLES:
            outputs[style] = output_uri(spec, style, item["key"], None)
            storage.write_bytes(outputs[style], encode_image(pixels, "png"))
            storage.write_bytes(thumbnail_uri(spec, item["key"], style), thumbnail(pixels, spec.thumbnail_size))
        records.append(manifest.Record(key=item["key"], input=item["uri"], status="ok", outputs=outputs))
    page = Path(write_gallery(spec, records, truth=truth)["html"]).read_text()
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", page.split("<tbody>")[0])
    assert [h for h in headers if "ground truth" in h] == [
        "cartoon (ground truth)", "anime (ground truth)", "error vs ground truth (mean abs, 0-255)"]


def test_summary_table_has_baseline_and_scpc_rows_per_style_recomputed_from_the_files(tmp_path):
    from fstrain.config import load_config
    from fstrain.losses import perceptual_distance
    from fstrain.models.hub import ModelHub
    from fstrain.models.init import init_models
    from fstrain.settings import PipelineConfig

    root = str(tmp_path / "root")
    init_models(layout.models(root), **TINY_MODEL_ARGS)
    init_models(tmp_path / "other", **{**TINY_MODEL_ARGS, "seed": 1})
    # Stand-ins for the run's fine-tunes: G* = the base G, G' = another G of the same shape.
    for (label, mode), source in zip(FIDELITY_ROWS, (Path(layout.models(root)), tmp_path / "other")):
        for style in STYLES:
            target = Path(layout.final_generator(layout.mode_run(root, "demo", style, mode)))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / "generator.pt", target)
    photos, truth = layout.demo_photos(root), layout.demo_truth(root)
    write_photos(photos, count=3, size=SIZE)
    write_truths(truth, count=3, size=SIZE, styles=STYLES)
    config = load_config(str(REPO / "configs" / "tiny_five_styles.yaml"), PipelineConfig)

    table = ground_truth_fidelity(config, root=root, run_id="demo", photos_uri=photos, truth_uri=truth, styles=STYLES)

    assert table["photos"] == 3 and list(table["styles"]) == list(STYLES)
    hub = ModelHub(config.models, root)
    encoder, lpips = hub.encoder("encoder_wplus"), hub.lpips()
    keys = sorted(p.name for p in Path(photos).iterdir())
    x = torch.stack([torch.from_numpy(_pixels(f"{photos}/{k}")).permute(2, 0, 1).float() / 127.5 - 1 for k in keys])
    for style in STYLES:
        rows = table["styles"][style]
        assert list(rows) == [label for label, _ in FIDELITY_ROWS]
        y = torch.stack([torch.from_numpy(_pixels(f"{truth}/{style}/{k}")).permute(2, 0, 1).float() / 127.5 - 1
                         for k in keys])
        for label, mode in FIDELITY_ROWS:
            g = hub.generator_at(layout.final_generator(layout.mode_run(root, "demo", style, mode)),
                                 load_discriminator=False).generator.eval()
            with torch.no_grad():
                out = g.synthesis(encoder(x), randomize_noise=False).clamp(-1, 1)
                expected = float(perceptual_distance(lpips, out, y).double().mean())
            measured = rows[label]["gt_perceptual"]
            assert math.isfinite(measured) and math.isclose(measured, expected, rel_tol=1e-4), (style, label)
            assert rows[label]["gt_attribute"] is None      # random tiny models: no attribute reader in models.json
        assert rows["baseline G*"]["gt_perceptual"] != rows["SC&PC G'"]["gt_perceptual"]

    lines = fidelity_lines(table)
    text = "\n".join(lines)
    for style in STYLES:
        rows = table["styles"][style]
        for label in rows:
            assert re.search(rf"{style}\s+{re.escape(label)}\s+{rows[label]['gt_perceptual']:.4f}\s+n/a", text)
        lower = min(rows, key=lambda label: rows[label]["gt_perceptual"])
        assert f"lower: perceptual {lower}" in text
    assert "GT attribute error not measured" in text and "instruments: perceptual net: " in text
    assert "FID" not in text

    # With stylize.refine_steps the table measures the codes the batch job renders: E_w+ refined against the base G.
    import dataclasses

    from fstrain.stylize import refiner_from_config

    refining = dataclasses.replace(config, stylize=dataclasses.replace(config.stylize, refine_steps=3))
    refined_table = ground_truth_fidelity(refining, root=root, run_id="demo", photos_uri=photos, truth_uri=truth,
                                          styles=STYLES[:1])
    with torch.no_grad():
        plain_codes = encoder(x)
    refined_codes = refiner_from_config(refining, root)(x, plain_codes)
    y = torch.stack([torch.from_numpy(_pixels(f"{truth}/{STYLES[0]}/{k}")).permute(2, 0, 1).float() / 127.5 - 1
                     for k in keys])
    for label, mode in FIDELITY_ROWS:
        g = hub.generator_at(layout.final_generator(layout.mode_run(root, "demo", STYLES[0], mode)),
                             load_discriminator=False).generator.eval()
        with torch.no_grad():
            out = g.synthesis(refined_codes, randomize_noise=False).clamp(-1, 1)
            expected = float(perceptual_distance(lpips, out, y).double().mean())
        measured = refined_table["styles"][STYLES[0]][label]["gt_perceptual"]
        assert math.isclose(measured, expected, rel_tol=1e-4), label
        assert measured != table["styles"][STYLES[0]][label]["gt_perceptual"]
