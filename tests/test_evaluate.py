"""fstrain.evaluate on a tiny trained run (baseline, sc, pc trained for 3 steps; sc+pc not trained): the paper's
table (rows = modes, columns = FID / perceptual / semantic distance), its JSON/Markdown files, the CLI, and
clear errors. Every model is RANDOM, so the values are checked for shape and sanity, not for quality."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from fstrain import layout
from fstrain.data import storage
from fstrain.evaluate import evaluate_style, find_styles, markdown, write_report
from fstrain.evaluate.__main__ import main
from fstrain.metrics import FeatureStatistics, frechet_distance_between, load_inception
from fstrain.metrics.distances import fixed_latents, render_fixed
from fstrain.metrics.features import extract_features
from fstrain.models.checkpoints import load_generator

HEADER = "| Mode | FID | Perceptual distance | Semantic distance | Steps |"
LABELS = ["baseline", "+SC", "+PC", "+SC&PC"]


@pytest.fixture(scope="module")
def record(evaluation_run):
    run = evaluation_run
    return evaluate_style(run.config, root=run.root, run_id=run.run_id, style=run.style)


def test_table_rows_are_the_modes_with_finite_metrics_and_untrained_modes_marked(record, evaluation_run):
    rows = record["rows"]
    assert [row["label"] for row in rows] == LABELS
    assert [row["status"] for row in rows] == ["trained", "trained", "trained", "not trained"]
    for row in rows[:3]:
        assert row["steps"] == evaluation_run.steps
        for key in ("fid", "perceptual_distance", "semantic_distance", "semantic_lpips", "semantic_identity"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["mode"], key, row[key])
        assert row["fid"] > 0 and row["perceptual_distance"] > 0
        # Fine-tuning moved G' away from G: the semantic distance is positive, and it is the documented sum.
        assert row["semantic_distance"] > 0 and row["semantic_lpips"] > 0
        assert row["semantic_distance"] == pytest.approx(row["semantic_lpips"] + 0.1 * row["semantic_identity"])
    untrained = rows[3]
    assert untrained["fid"] is None and untrained["generator"] is None and untrained["steps"] is None
    reference = record["reference"]
    assert reference["semantic_distance"] == 0.0 and math.isfinite(reference["fid"])
    # The three fine-tuned generators differ, so do their numbers.
    assert len({row["semantic_distance"] for row in rows[:3]}) == 3


def test_fid_column_is_the_frechet_distance_of_the_generators_features(record, evaluation_run):
    """Recompute the baseline FID by hand from the same extractor, codes and style images."""
    run, cfg = evaluation_run, evaluation_run.config.evaluate
    extractor = load_inception(str(Path(run.root) / "models" / "inception_RANDOM.pth"), input_size=75)
    g = load_generator(record["rows"][0]["generator"], load_discriminator=False).generator
    fake = FeatureStatistics(2048).update(extract_features(
        extractor, render_fixed(g, fixed_latents(cfg.num_samples, g.style_dim, cfg.seed), 0, cfg.seed)))
    from fstrain.data.shards import read_samples
    from fstrain.stylize.images import decode_png, from_uint8
    reals = torch.cat([from_uint8(decode_png(s["png"])) for s in read_samples(f"{run.root}/datasets/{run.style}")])
    real = FeatureStatistics(2048).update(extract_features(extractor, reals))
    assert record["fid_real_count"] == real.count == 12
    assert record["rows"][0]["fid"] == pytest.approx(frechet_distance_between(fake, real), rel=1e-6)


def test_perceptual_column_is_lpips_between_each_photo_and_its_general_stylization(record, evaluation_run):
    """Recompute every trained row's perceptual distance by hand: the synthetic photos, y = G'(E_w+(x)) with G''s
    stored noise, LPIPS photo by photo after the documented upsampling to 64 px, averaged."""
    import numpy as np
    import torch.nn.functional as F

    from fstrain.data.synthetic import generate
    from fstrain.models.perceptual import load_lpips
    from fstrain.models.psp import load_encoder
    from fstrain.models.hub import resolve_uri
    from fstrain.stylize.images import from_uint8

    run, cfg, models = evaluation_run, evaluation_run.config.evaluate, evaluation_run.config.models
    encoder = load_encoder(resolve_uri(models.encoder_wplus, run.root), space="w+")
    lpips = load_lpips(resolve_uri(models.lpips_backbone, run.root), net=models.lpips_net)
    size = load_generator(record["rows"][0]["generator"], load_discriminator=False).generator.size
    photos = from_uint8(np.stack([np.asarray(image.convert("RGB"))
                                  for _, image, _ in generate("photo", cfg.num_photos, size, seed=cfg.seed)]))
    up = lambda t: F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
    for row in record["rows"][:3]:
        g = load_generator(row["generator"], load_discriminator=False).generator
        with torch.no_grad():
            values = [float(lpips(up(x), up(g.synthesis(encoder(x), randomize_noise=False))))
                      for x in photos.split(1)]
        assert row["perceptual_distance"] == pytest.approx(sum(values) / len(values), rel=1e-4), row["mode"]


def test_report_says_loudly_that_features_and_models_are_random(record):
    text = markdown(record)
    assert HEADER in text
    assert "| +SC&PC | not trained | – | – | – |" in text
    assert "FID uses RANDOM feature-extractor weights" in text
    assert "LPIPS uses a RANDOM backbone" in text
    assert "Inception input is 75 px" in text
    baseline = record["rows"][0]
    assert (f"| baseline | {baseline['fid']:.2f} | {baseline['perceptual_distance']:.4f} | "
            f"{baseline['semantic_distance']:.4f} | 3 |") in text
    assert "Semantic distance: mean over 8 fixed z" in text


def test_cli_prints_the_table_and_writes_json_and_markdown_to_the_style_folder(evaluation_run, capsys):
    run = evaluation_run
    assert find_styles(run.root, run.run_id) == [run.style]
    # No --config: the config stored in the run's checkpoints (with its evaluate section) is used.
    assert main(["--root", run.root, "--run-id", run.run_id]) == 0
    out = capsys.readouterr()
    assert "config: as stored in" in out.err
    assert HEADER in out.out and "| +SC&PC | not trained |" in out.out
    style_dir = Path(run.root) / "runs" / run.run_id / run.style
    saved = json.loads((style_dir / "evaluation.json").read_text())
    assert [row["label"] for row in saved["rows"]] == LABELS
    assert saved["run_id"] == run.run_id and saved["feature_extractor"]["random_init"] is True
    for row in saved["rows"][:3]:
        assert math.isfinite(row["fid"]) and row["semantic_distance"] > 0
        assert f"| {row['label']} | {row['fid']:.2f} |" in out.out
    assert (style_dir / "evaluation.md").read_text() in out.out


def test_unfinished_and_missing_modes_are_rows_not_errors(evaluation_run, tmp_path):
    root = str(tmp_path)
    storage.write_json(layout.latest(layout.mode_run(root, "partial", "anime", "sc")),
                       {"step": 2, "checkpoint": "checkpoints/step-000002.pt"})
    record = evaluate_style(evaluation_run.config, root=root, run_id="partial", style="anime")
    assert [row["status"] for row in record["rows"]] == ["not trained", "not finished", "not trained", "not trained"]
    assert record["rows"][1]["steps"] == 2
    assert "| +SC | not finished (step 2) | – | – | – |" in markdown(record)
    json_uri, md_uri = write_report(record)
    assert json_uri == f"{root}/runs/partial/anime/evaluation.json" and storage.exists(md_uri)


def test_cli_errors_name_what_is_missing(evaluation_run, tmp_path, capsys):
    run = evaluation_run
    assert main(["--root", run.root, "--run-id", "no-such-run"]) == 2
    assert f"{run.root}/runs/no-such-run: no trained modes found" in capsys.readouterr().err
    # A configured Inception file that does not exist: an error naming the config key, never random weights.
    config = dataclasses.replace(run.config, evaluate=dataclasses.replace(
        run.config.evaluate, inception_weights=str(tmp_path / "inception_v3.pth")))
    with pytest.raises(FileNotFoundError, match=r"evaluate.inception_weights = .*inception_v3.pth"):
        evaluate_style(config, root=run.root, run_id=run.run_id, style=run.style)
    assert main(["--root", run.root, "--run-id", run.run_id, "--inception-weights", "models/missing.pth"]) == 2
    assert "evaluate.inception_weights" in capsys.readouterr().err
