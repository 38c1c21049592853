"""`make demo`: the whole system end to end on this machine, on embedded defaults.

    python -m cluster.demo [--root DIR|s3://bucket/prefix] [--images N] [--photos N] [--keep-ray]

1. starts a local Ray head (loopback only, its own auth token) — cluster.local;
2. writes tiny RANDOM base models (fstrain.models.init) and five small style datasets drawn from the synthetic
   portrait world, ingested into WebDataset shards (fstrain.ingest);
3. submits `python -m cluster.train configs/tiny_five_styles.yaml` with `ray job submit`: five styles at once;
4. writes aligned synthetic photos and submits `python -m batch.stylize` over them into all five styles;
5. prints the gallery (HTML + contact-sheet PNG) and the run summary.

The models are tiny (32 px) and were never trained on real faces: the pictures show that every stage runs and
where its outputs go, not what a real style looks like. For real results use configs/five_styles.yaml with the
official weights (README: "Real checkpoints").
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

from fstrain.data import storage

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny_five_styles.yaml"
STYLES = ("cartoon", "anime", "fantasy", "illustration", "impasto")
TINY_MODEL_ARGS = {"size": 32, "style_dim": 512, "n_mlp": 2, "channel_multiplier": 1, "channel_max": 32,
                   "encoder_depth": "tiny", "identity": "tiny", "lpips_net": "alex", "seed": 0}
RUN_ID = "demo"
NOTICE = ("NOTE: the demo's models are tiny (32 px) RANDOM networks, never trained on real faces; the images show\n"
          "that every stage runs end to end, not what a real style looks like. Real runs: configs/five_styles.yaml\n"
          "with the official weights (see README, 'Real checkpoints').")


def write_style_images(folder: Path, style: str, count: int, size: int, seed: int) -> None:
    """`count` portraits of `style` from the synthetic world, as PNG + JSON sidecar (kept by ingest)."""
    from fstrain.data.synthetic import generate

    folder.mkdir(parents=True, exist_ok=True)
    for key, image, meta in generate(style, count, size, seed):
        image.save(folder / f"{key}.png")
        (folder / f"{key}.json").write_text(json.dumps(meta))


def prepare_world(root: str, *, images_per_style: int, image_size: int = 32, styles=STYLES, seed: int = 1000,
                  log=print) -> None:
    """Tiny random models under `<root>/models/` and one ingested dataset per style under `<root>/datasets/`."""
    from fstrain.ingest import ingest
    from fstrain.models.init import init_models

    init_models(storage.join(root, "models"), **TINY_MODEL_ARGS)
    log(f"wrote tiny RANDOM models to {storage.join(root, 'models')}")
    with tempfile.TemporaryDirectory(prefix="fstrain-demo-styles-") as tmp:
        for index, style in enumerate(styles):
            folder = Path(tmp) / style
            # Different seeds per style: unpaired style sets, as real style datasets are.
            write_style_images(folder, style, images_per_style, image_size * 2, seed + index)
            report = ingest(str(folder), root, style, image_size, samples_per_shard=max(8, images_per_style // 2),
                            progress=False)
            log(f"ingested {report.ok} {style} images into {report.dataset_uri}")


def write_photos(dest: str, *, count: int, size: int, seed: int = 7) -> None:
    """Aligned synthetic photos (PNG) under `dest`, the input folder/prefix of the batch job."""
    import io

    from fstrain.data.synthetic import generate

    for key, image, _ in generate("photo", count, size, seed):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        storage.write_bytes(storage.join(dest, f"{key}.png"), buf.getvalue())


def submit(cluster, entrypoint: list[str], *, log=print, timeout_s: float = 1800) -> None:
    """`ray job submit --working-dir <repo> -- <entrypoint>`, its logs streamed; raises when the job fails."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", cluster.dashboard_url,
           "--working-dir", str(REPO_ROOT), "--runtime-env-json", json.dumps({"excludes": [
               ".venv", ".git", "demo-out", "*.egg-info", "__pycache__"]}), "--", *entrypoint]
    log("$ ray job submit -- " + " ".join(entrypoint))
    done = subprocess.run(cmd, env=cluster.client_env(), timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"ray job `{' '.join(entrypoint)}` failed (exit {done.returncode}); its log is above")


def run_demo(root: str, *, images_per_style: int, photos: int, state_dir: Path, log=print) -> dict:
    from cluster.local import local_head

    started = time.time()
    log(NOTICE)
    prepare_world(root, images_per_style=images_per_style, log=log)
    photos_uri = storage.join(root, "inputs", "photos")
    write_photos(photos_uri, count=photos, size=64)
    log(f"wrote {photos} aligned synthetic photos to {photos_uri}")
    out_uri = storage.join(root, "stylized")
    with local_head(state_dir, num_cpus=4) as cluster:
        log(f"local Ray head at {cluster.dashboard_url} (loopback only)")
        submit(cluster, ["python", "-m", "cluster.train", str(TINY_CONFIG.relative_to(REPO_ROOT)),
                         "--root", root, "--run-id", RUN_ID], log=log)
        submit(cluster, ["python", "-m", "batch.stylize", "--input", photos_uri, "--output", out_uri,
                         "--styles", ",".join(STYLES), "--root", root, "--config",
                         str(TINY_CONFIG.relative_to(REPO_ROOT)), "--aligned", "--job-id", RUN_ID], log=log)
    summary = storage.read_json(storage.join(root, "runs", RUN_ID, "summary.json"))
    result = {"root": root, "summary": storage.join(root, "runs", RUN_ID, "summary.json"),
              "gallery_html": storage.join(out_uri, "gallery.html"),
              "contact_sheet": storage.join(out_uri, "contact_sheet.png"),
              "manifest": storage.join(out_uri, "manifest.jsonl"),
              "styles": {s: v["status"] for s, v in summary["styles"].items()},
              "wall_s": round(time.time() - started, 1)}
    log("")
    log(NOTICE)
    log(f"run summary:   {result['summary']}")
    for style, status in result["styles"].items():
        log(f"  {style:<13} {status:<7} {summary['styles'][style].get('published_uri')}")
    log(f"manifest:      {result['manifest']}")
    log(f"gallery:       {result['gallery_html']}")
    log(f"contact sheet: {result['contact_sheet']}")
    log(f"demo finished in {result['wall_s']} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO_ROOT / "demo-out"),
                        help="storage root: a local folder (default ./demo-out) or s3://bucket/prefix")
    parser.add_argument("--images", type=int, default=24, help="style images per style")
    parser.add_argument("--photos", type=int, default=12, help="photos to batch-stylize")
    parser.add_argument("--state-dir", default=None, help="where the local Ray head keeps its state")
    args = parser.parse_args(argv)
    root = args.root if "://" in args.root else str(Path(args.root).resolve())
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="fsd-", dir="/tmp"))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    result = run_demo(root, images_per_style=args.images, photos=args.photos, state_dir=state_dir)
    return 0 if all(status == "ok" for status in result["styles"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
