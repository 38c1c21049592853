"""`make demo`: the whole system end to end on this machine, on embedded defaults.

    python -m cluster.demo [--root DIR|s3://bucket/prefix] [--images N] [--photos N] [--state-dir DIR]

1. installs the synthetic world's 64 px instruments into `<root>/models/` (assets/world64: base G and D, pSp
   encoders, identity net, LPIPS trunk, evaluation nets, made by `python -m fstrain.world.pretrain` and committed
   with a manifest; checked against it, copied only when changed) and writes five small style datasets drawn from
   the synthetic portrait world, ingested into WebDataset shards (fstrain.ingest);
2. starts a local Ray head (loopback only, its own auth token) — cluster.local;
3. submits `python -m cluster.train configs/demo_five_styles.yaml` with `ray job submit`: five styles at once;
4. writes aligned synthetic photos and submits `python -m batch.stylize` over them into all five styles;
5. prints the gallery (HTML + contact-sheet PNG) and the run summary.

The models are small (64 px) and were trained on a 2-core CPU on the synthetic world's images, never on real
faces: the pictures show what each stage does to a face of that world, not what a real style looks like. For
real results use configs/five_styles.yaml with the official weights (README: "Real checkpoints").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fstrain import layout
from fstrain.data import storage

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo_five_styles.yaml"      # pretrained models, longer fine-tunes
STYLES = ("cartoon", "anime", "fantasy", "illustration", "impasto")
TINY_MODEL_ARGS = {"size": 32, "style_dim": 512, "n_mlp": 2, "channel_multiplier": 1, "channel_max": 32,
                   "encoder_depth": "tiny", "identity": "tiny", "lpips_net": "alex", "seed": 0}
RUN_ID = "demo"
DEFAULT_ROOT = REPO_ROOT / "demo-out"
WORLD_MODELS = REPO_ROOT / "assets" / "world64"   # fstrain.world.pretrain's folder, committed with manifest.json
DEMO_IMAGE_SIZE = 64                               # the world models' size (configs/demo_five_styles.yaml data.image_size)
DEMO_MARKER = layout.DEMO_MARKER   # the demo deletes its derived outputs only under a root carrying this


def derived_outputs(root: str) -> dict[str, str]:
    """Everything made from the base models, by the name a message shows: the run, published styles, outputs."""
    return {"styles": layout.styles(root), f"runs/{RUN_ID}": layout.run(root, RUN_ID),
            "stylized": layout.demo_stylized(root)}


class DemoRootError(RuntimeError):
    """The chosen root holds outputs the demo did not make; it will not overwrite or delete them."""


def claim_demo_root(root: str) -> None:
    """Mark `root` as the demo's own, refusing a root that already holds someone else's pairs/styles/runs."""
    marker = layout.demo_marker(root)
    if storage.exists(marker):
        return
    is_default = "://" not in root and Path(root).resolve() == DEFAULT_ROOT.resolve()   # earlier demos' folder
    if not is_default:
        foreign = [name for name, uri in derived_outputs(root).items() if storage.list_uris(uri)]
        if foreign:
            raise DemoRootError(f"{root} already holds {', '.join(foreign)} that the demo did not write (no "
                                f"{DEMO_MARKER}); the demo replaces such outputs when it retrains its models, so "
                                f"give it an empty --root")
    storage.write_json(marker, {"made_by": "python -m cluster.demo", "created": time.time()})


def notice(pretrained_seconds: float) -> str:
    """What the demo's pictures are (and are not), for the first and last lines of its output."""
    return (f"NOTE: the demo's base models are the synthetic world's 64 px instruments ({WORLD_MODELS.name}, "
            f"pretrained for {pretrained_seconds / 60:.0f} min\non a 2-core CPU by fstrain.world.pretrain), never on "
            f"real faces; the pictures show what the method does in that\nworld, not what a real style looks like. "
            f"Real runs: configs/five_styles.yaml with the official weights\n(see README, 'Real checkpoints').")


class WorldModelsError(RuntimeError):
    """The committed world models differ from their manifest (edited, truncated, or a Git LFS pointer)."""


def install_world_models(models_uri: str, assets: Path = WORLD_MODELS, *, log=print) -> tuple[bool, float]:
    """Copy the committed world instruments into `models_uri` after checking each file's sha256 against the
    folder's manifest; files already there with the same sha256 are kept. Returns (anything copied, the seconds
    the pretraining command took)."""
    from fstrain.provenance import sha256_uri
    from fstrain.world.pretrain import MANIFEST, verify_manifest

    if not (assets / MANIFEST).is_file():
        raise WorldModelsError(f"{assets / MANIFEST} is missing; the demo's models come from that folder (restore "
                               f"it from git, or write one with `python -m fstrain.world.pretrain {assets}`)")
    problems = verify_manifest(assets)
    if problems:
        raise WorldModelsError(f"{assets}: {'; '.join(problems)}; restore the folder from git, or regenerate it with "
                               f"the command in its {MANIFEST}")
    manifest = json.loads((assets / MANIFEST).read_text())
    copied = []
    for name, entry in sorted(manifest["files"].items()):
        uri = storage.join(models_uri, name)
        if storage.exists(uri) and sha256_uri(uri) == entry["sha256"]:
            continue
        storage.write_bytes(uri, (assets / name).read_bytes())
        copied.append(name)
    storage.write_bytes(storage.join(models_uri, MANIFEST), (assets / MANIFEST).read_bytes())
    log(f"installed {len(copied)} world model files from {assets} into {models_uri}" if copied else
        f"reusing the world models already in {models_uri} (same sha256 as {assets.name}/{MANIFEST})")
    return bool(copied), float(manifest["total_seconds"])


def remove_derived_outputs(root: str, *, log=print) -> None:
    """New base models invalidate pairs, runs, published styles and stylized photos of earlier demos (pairs and
    batch outputs are skipped when present, so stale ones would be reused)."""
    for uri in derived_outputs(root).values():
        removed = storage.delete_prefix(uri)
        if removed:
            log(f"removed {removed} files of an earlier demo under {uri} (new base models)")


def write_style_images(folder: Path, style: str, count: int, size: int, seed: int) -> None:
    """`count` portraits of `style` from the synthetic world, as PNG + JSON sidecar (kept by ingest)."""
    from fstrain.data.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    for key, image, meta in generate(style, count, size, seed):
        image.save(folder / f"{key}.png")
        (folder / f"{key}.json").write_text(json.dumps(meta))


def prepare_world(root: str, *, images_per_style: int, image_size: int = 32, styles=STYLES, seed: int = 1000,
                  pretrained: bool = False, log=print) -> float | None:
    """Tiny models under `<root>/models/` and one ingested dataset per style under `<root>/datasets/`.

    pretrained=False: random models (fstrain.models.init; fast, for tests). pretrained=True: the committed world
    instruments (install_world_models; pass image_size=DEMO_IMAGE_SIZE), reused when already there; outputs of
    earlier demos made from other base models are removed. Returns the pretraining seconds (None for random models).
    """
    from fstrain.ingest import ingest
    from fstrain.models.init import init_models

    models_uri = layout.models(root)
    seconds = None
    if pretrained:
        trained_now, seconds = install_world_models(models_uri, log=log)
        if trained_now:
            claim_demo_root(root)   # never delete outputs under a root the demo does not own
            remove_derived_outputs(root, log=log)
    else:
        init_models(models_uri, **TINY_MODEL_ARGS)
        log(f"wrote tiny RANDOM models to {models_uri}")
    with tempfile.TemporaryDirectory(prefix="fstrain-demo-styles-") as tmp:
        for index, style in enumerate(styles):
            folder = Path(tmp) / style
            # Different seeds per style: unpaired style sets, as real style datasets are.
            write_style_images(folder, style, images_per_style, image_size * 2, seed + index)
            report = ingest(str(folder), root, style, image_size, samples_per_shard=max(8, images_per_style // 2),
                            progress=False)
            log(f"ingested {report.ok} {style} images into {report.dataset_uri}")
    return seconds


PHOTO_SEED = 7    # the world seed of the demo's photos (style datasets use 1000+; the instruments 15001..15003)


def write_photos(dest: str, *, count: int, size: int, seed: int = PHOTO_SEED) -> None:
    """Aligned synthetic photos (PNG) under `dest`, the input folder/prefix of the batch job."""
    from fstrain.data.images import encode_png
    from fstrain.data.synthetic import generate

    for key, image, _ in generate("photo", count, size, seed):
        storage.write_bytes(storage.join(dest, f"{key}.png"), encode_png(image))


def write_truths(dest: str, *, count: int, size: int, styles=STYLES, seed: int = PHOTO_SEED) -> None:
    """The ground truth of every photo `write_photos` writes with the same count and seed: the world's render of
    the same person in the same view in each style, as `<dest>/<style>/<photo key>` (batch.stylize --truth)."""
    from fstrain.data.images import encode_png
    from fstrain.data.synthetic import generate

    for style in styles:
        for key, image, _ in generate(style, count, size, seed):
            storage.write_bytes(storage.join(dest, style, f"{key}.png"), encode_png(image))


FIDELITY_ROWS = (("baseline G*", "baseline"), ("SC&PC G'", "sc+pc"))   # (label, fine-tune folder of the run)


def _read_images(uris: list[str], size: int):
    import numpy as np

    from fstrain.data.images import decode_pixels
    from fstrain.world.splits import to_tensor

    return to_tensor(np.stack([decode_pixels(storage.read_bytes(uri), uri, size) for uri in uris]))


def ground_truth_fidelity(config, *, root: str, run_id: str, photos_uri: str, truth_uri: str, styles=STYLES,
                          batch_size: int = 16) -> dict:
    """Per style and row of FIDELITY_ROWS: G(E(photo)) of the run's fine-tune against the photo's ground truth,
    measured by fstrain.study.evaluation with the evaluation nets of `<root>/models` (fstrain.study.instruments).
    The codes are the ones the batch job renders: E_w+(photo), refined against the base G when the config's
    stylize.refine_steps asks for it (fstrain.stylize.refine). Pivotal tuning (stylize.pivotal_steps) is not applied
    here: the table compares the two fine-tunes at the same codes.
    Returns {"instruments": [labels], "styles": {style: {label: {gt_perceptual, gt_attribute, ...}}}}."""
    import torch

    from fstrain.models.hub import ModelHub
    from fstrain.study.evaluation import ground_truth_fidelity as measure, render_codes
    from fstrain.study.instruments import load_instruments
    from fstrain.study.settings import StudyEvaluationConfig
    from fstrain.stylize.refine import encode_in_batches, refiner_from_config

    device = torch.device("cpu")
    hub = ModelHub(config.models, root)
    encoder = hub.encoder("encoder_wplus", device)
    instruments = load_instruments(StudyEvaluationConfig(feature_net="none"), config, root, device)
    refiner = refiner_from_config(config, root, device)
    photo_uris = storage.list_uris(photos_uri, suffixes=".png")
    if not photo_uris:
        raise FileNotFoundError(f"no photos (*.png) under {photos_uri}")
    keys = [uri[len(photos_uri.rstrip("/")) + 1:] for uri in photo_uris]
    used = ("perceptual net", "attribute reader")      # the two nets this table's numbers come from
    table: dict = {"instruments": [i["label"] for i in instruments.describe() if i["role"] in used],
                   "photos": len(keys),
                   "styles": {}}
    codes_at: dict = {}      # generator size -> the photos' codes, encoded (and refined) once, not per style and row
    for style in styles:
        rows, truths = {}, None
        for label, mode in FIDELITY_ROWS:
            g = hub.generator_at(layout.final_generator(layout.mode_run(root, run_id, style, mode)),
                                 load_discriminator=False).generator.eval()
            if g.size not in codes_at:
                codes_at[g.size] = encode_in_batches(encoder, _read_images(photo_uris, g.size), batch_size,
                                                     refiner)
            if truths is None or truths.shape[-1] != g.size:
                truths = _read_images([storage.join(truth_uri, style, key) for key in keys], g.size)
            outputs = render_codes(g, codes_at[g.size], batch_size, device)
            row = measure(outputs, truths, instruments, batch_size, device)
            row.pop("gt_attribute_per_attribute", None)
            rows[label] = row
        table["styles"][style] = rows
    return table


def fidelity_lines(table: dict) -> list[str]:
    """The summary's table: per style, GT perceptual distance and GT attribute error of each row, and which row is
    lower on each (as measured; lower = closer to the true stylized person)."""
    (base_label, _), (ours_label, _) = FIDELITY_ROWS
    has_attributes = any(row["gt_attribute"] is not None for rows in table["styles"].values() for row in rows.values())
    lines = [f"ground-truth fidelity on the {table['photos']} demo photos (lower = closer to the world's render of "
             f"the same person in the style):",
             f"  {'style':<13} {'row':<12} {'GT perceptual':>13} {'GT attribute err':>16}"]

    def lower(metric: str, rows: dict) -> str:
        a, b = rows[base_label][metric], rows[ours_label][metric]
        if a is None or b is None:
            return "n/a"
        return "tie" if a == b else (ours_label if b < a else base_label)

    for style, rows in table["styles"].items():
        for label in (base_label, ours_label):
            row = rows[label]
            attribute = "n/a" if row["gt_attribute"] is None else f"{row['gt_attribute']:.4f}"
            lines.append(f"  {style:<13} {label:<12} {row['gt_perceptual']:>13.4f} {attribute:>16}")
        lines.append(f"  {'':<13} lower: perceptual {lower('gt_perceptual', rows)}"
                     + (f", attribute {lower('gt_attribute', rows)}" if has_attributes else ""))
    if not has_attributes:
        lines.append("  (no attribute reader in the models folder's models.json: GT attribute error not measured)")
    lines.append("  instruments: " + "; ".join(table["instruments"]))
    return lines


def submit(cluster, entrypoint: list[str], *, log=print, timeout_s: float = 1800) -> None:
    """`ray job submit --working-dir <repo> -- <entrypoint>`, its logs streamed; raises when the job fails."""
    from cluster.local import upload_excludes

    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", cluster.dashboard_url,
           "--working-dir", str(REPO_ROOT), "--runtime-env-json", json.dumps({"excludes": upload_excludes()}), "--", *entrypoint]
    log("$ ray job submit -- " + " ".join(entrypoint))
    done = subprocess.run(cmd, env=cluster.client_env(), timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"ray job `{' '.join(entrypoint)}` failed (exit {done.returncode}); its log is above")


def batch_entrypoint(root: str, photos_uri: str, truth_uri: str, out_uri: str) -> list[str]:
    """The demo's batch job: every photo into every style, the gallery with each style's ground truth."""
    return ["python", "-m", "batch.stylize", "--input", photos_uri, "--output", out_uri, "--styles", ",".join(STYLES),
            "--root", root, "--config", str(DEMO_CONFIG.relative_to(REPO_ROOT)), "--aligned", "--job-id", RUN_ID,
            "--truth", truth_uri]


def run_demo(root: str, *, images_per_style: int, photos: int, state_dir: Path, log=print) -> dict:
    from cluster.local import local_head

    started = time.time()
    claim_demo_root(root)
    pretrained_s = prepare_world(root, images_per_style=images_per_style, image_size=DEMO_IMAGE_SIZE, pretrained=True,
                                 log=log)
    log(notice(pretrained_s))
    photos_uri = layout.demo_photos(root)
    write_photos(photos_uri, count=photos, size=DEMO_IMAGE_SIZE)
    truth_uri = layout.demo_truth(root)
    write_truths(truth_uri, count=photos, size=DEMO_IMAGE_SIZE)
    log(f"wrote {photos} aligned synthetic photos to {photos_uri} and their ground truth in each style to {truth_uri}")
    out_uri = layout.demo_stylized(root)
    with local_head(state_dir, num_cpus=4) as cluster:
        log(f"local Ray head at {cluster.dashboard_url} (loopback only)")
        submit(cluster, ["python", "-m", "cluster.train", str(DEMO_CONFIG.relative_to(REPO_ROOT)),
                         "--root", root, "--run-id", RUN_ID], log=log)
        submit(cluster, batch_entrypoint(root, photos_uri, truth_uri, out_uri), log=log)
    summary = storage.read_json(layout.run_summary(root, RUN_ID))
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig

    trained = [style for style in STYLES if summary["styles"].get(style, {}).get("status") == "ok"]
    fidelity = ground_truth_fidelity(load_config(str(DEMO_CONFIG), PipelineConfig), root=root, run_id=RUN_ID,
                                     photos_uri=photos_uri, truth_uri=truth_uri, styles=trained)
    storage.write_json(layout.demo_fidelity(root), fidelity)
    result = {"root": root, "summary": layout.run_summary(root, RUN_ID),
              "gallery_html": storage.join(out_uri, "gallery.html"),
              "contact_sheet": storage.join(out_uri, "contact_sheet.png"),
              "manifest": storage.join(out_uri, "manifest.jsonl"),
              "batch_summary": storage.join(out_uri, "summary.json"), "fidelity": layout.demo_fidelity(root),
              "styles": {s: v["status"] for s, v in summary["styles"].items()},
              "pretrain_s": pretrained_s, "wall_s": round(time.time() - started, 1)}
    log("")
    log(notice(pretrained_s))
    log(f"run summary:   {result['summary']}")
    for style, status in result["styles"].items():
        log(f"  {style:<13} {status:<7} {summary['styles'][style].get('published_uri')}")
    log(f"manifest:      {result['manifest']} (one line per photo; counts in {result['batch_summary']})")
    for line in fidelity_lines(fidelity):
        log(line)
    log(f"fidelity:      {result['fidelity']}")
    log(f"gallery:       {result['gallery_html']} (with each style's ground-truth column)")
    log(f"contact sheet: {result['contact_sheet']}")
    log(f"demo finished in {result['wall_s']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    from fstrain import preflight
    from fstrain.cli import add_debug_flag

    parser = argparse.ArgumentParser(prog="python -m cluster.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT),
                        help="storage root: a local folder (default ./demo-out) or s3://bucket/prefix")
    parser.add_argument("--images", type=int, default=24, help="style images per style")
    parser.add_argument("--photos", type=int, default=12, help="photos to batch-stylize")
    parser.add_argument("--state-dir", default=None, help="where the local Ray head keeps its state")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    root = layout.absolute_root(args.root)
    preflight.storage_usable(root, "--root", write=True)     # a missing bucket or bad credentials: exit 2 now
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="fsd-", dir="/tmp"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        result = run_demo(root, images_per_style=args.images, photos=args.photos, state_dir=state_dir)
    except (DemoRootError, WorldModelsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if all(status == "ok" for status in result["styles"].values()) else 1


if __name__ == "__main__":
    from fstrain.cli import run_command

    sys.exit(run_command(main))
