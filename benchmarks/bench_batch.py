"""Throughput of batch stylization: photos/s per stage (in-process, no Ray) and end to end (Ray Data job).

    python benchmarks/bench_batch.py [--size 32] [--photos 64] [--styles 3] [--batch-size 8] [--no-ray]
    python benchmarks/bench_batch.py --size 1024 --photos 64 --batch-size 8      # on a GPU machine

Models are random (fstrain.models.init: real architecture at --size, tiny encoder unless --encoder-depth 50), the
photos are unaligned synthetic portraits (fstrain.data.synthetic) and the face detector is the hand-set SCRFD-format
test detector (tests/support/tiny_detector.py), so the figures measure the pipeline and the networks' cost, not
picture quality. On CUDA the generators run the compiled kernels (impl auto); the first stylize batch is a warm-up
(kernel build / cuDNN autotune) and is not timed.
Prints one table: stage, photos, seconds, photos/s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from batch import stages  # noqa: E402
from batch.stylize import list_inputs, main as stylize_main  # noqa: E402
from fstrain.data import storage  # noqa: E402

# The hand-set test detector is tuned on synthetic photos letterboxed into 160 px (its neck cut is a fixed number of
# pixels there): keep the square at that size.
DET_SIZE = 160
STYLE_NAMES = ("cartoon", "anime", "fantasy", "illustration", "impasto")


def make_world(work: Path, size: int, n_photos: int, n_styles: int, encoder_depth: str, photo_size: int):
    import torch

    from fstrain.models.checkpoints import load_generator, save_generator
    from fstrain.models.init import init_models
    from support.batch_inputs import synthetic_photo
    from support.tiny_detector import export_tiny_detector

    small = size <= 64
    models = init_models(work / "models", size=size, n_mlp=2 if small else 8, channel_multiplier=1 if small else 2,
                         channel_max=32 if small else 512, encoder_depth=encoder_depth, identity="tiny",
                         lpips_net="alex")["models"]
    styles = list(STYLE_NAMES[:n_styles])
    for index, style in enumerate(styles):
        loaded = load_generator(models["base_generator"]["uri"], load_discriminator=False)
        with torch.no_grad():
            for param in loaded.generator.parameters():
                param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(index)))
        save_generator(str(work / "root" / "styles" / style / "generator.pt"), loaded.generator, loaded.latent_avg,
                       {"style": style})
    export_tiny_detector(work / "detector")
    (work / "photos").mkdir(exist_ok=True)
    for i in range(n_photos):   # unaligned renders: canvas = 1.5x the aligned size
        image, _ = synthetic_photo(i, size=max(16, round(photo_size / 1.5)), seed=0)
        image.save(work / "photos" / f"photo-{i:04d}.jpg", quality=92)
    return models["encoder_wplus"]["uri"], styles


def batches(items: list[dict], size: int):
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield {"key": np.array([c["key"] for c in chunk], dtype=object),
               "uri": np.array([c["uri"] for c in chunk], dtype=object)}


def time_stages(spec: stages.JobSpec, items: list[dict], cpu_batch: int, gpu_batch: int) -> list[tuple]:
    import torch

    rows = []
    prepare = stages.PrepareFaces(spec)
    start = time.perf_counter()
    prepared = [prepare(b) for b in batches(items, cpu_batch)]
    rows.append(("prepare (read, decode, detect, align)", len(items), time.perf_counter() - start))
    merged = {k: np.concatenate([p[k] for p in prepared]) for k in prepared[0]}
    ok = int(merged["ok"].sum())
    if ok != len(items):
        print(f"warning: {len(items) - ok} photos failed to prepare", file=sys.stderr)

    actor = stages.StylizeActor(spec)
    gpu_batches = [{k: v[s:s + gpu_batch] for k, v in merged.items()} for s in range(0, len(items), gpu_batch)]
    actor(gpu_batches[0])  # warm-up: kernel build / autotune, not timed
    sync = torch.cuda.synchronize if actor.device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    stylized = [actor(b) for b in gpu_batches]
    sync()
    rows.append((f"stylize (E_w+ once, {len(spec.styles)} styles, {actor.device})", len(items),
                 time.perf_counter() - start))

    upload = stages.EncodeUpload(spec)
    start = time.perf_counter()
    for b in stylized:
        upload(b)
    rows.append((f"encode + upload ({spec.image_format}, local)", len(items), time.perf_counter() - start))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--photo-size", type=int, default=None,
                        help="input photo side, ~1.5x its face render (default 4x size, 160..1536)")
    parser.add_argument("--styles", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--encoder-depth", default=None, help="tiny | 50 (default: tiny below 256 px)")
    parser.add_argument("--no-ray", action="store_true", help="skip the end-to-end Ray Data job")
    parser.add_argument("--work", default=None, help="keep files here (default: a temp dir, removed)")
    args = parser.parse_args()
    photo_size = args.photo_size or int(min(1536, max(160, 4 * args.size)))
    encoder_depth = args.encoder_depth or ("tiny" if args.size < 256 else "50")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        encoder, styles = make_world(work, args.size, args.photos, args.styles, encoder_depth, photo_size)
        items = list_inputs(str(work / "photos"))
        spec = stages.JobSpec(input=str(work / "photos"), output=str(work / "out-stages"), job_id="bench",
                              styles=styles, encoder_uri=encoder, root=str(work / "root"),
                              generator_uris={s: str(work / "root" / "styles" / s / "generator.pt") for s in styles},
                              detector_root=str(work / "detector"), det_size=DET_SIZE, size=args.size)
        rows = time_stages(spec, items, args.batch_size, args.batch_size)
        if not args.no_ray:
            out = work / "out-ray"
            start = time.perf_counter()
            stylize_main(["--input", str(work / "photos"), "--output", str(out), "--styles", ",".join(styles),
                          "--root", str(work / "root"), "--encoder", encoder, "--detector-root",
                          str(work / "detector"), "--job-id", "bench", "--det-size", str(DET_SIZE), "--batch-size", str(args.batch_size),
                          "--max-actors", "1", "--cpu-actors", "2"])
            wall = time.perf_counter() - start
            summary = storage.read_json(str(out / "summary.json"))
            rows.append(("end to end, Ray Data job (incl. Ray start)", summary["processed"], wall))
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
        print(f"\nbatch stylization @ {args.size}px, {photo_size}px photos, {len(styles)} styles, batch "
              f"{args.batch_size}, encoder {encoder_depth}; {device}; {platform.processor() or platform.machine()}")
        print(f"{'stage':<48} {'photos':>7} {'seconds':>9} {'photos/s':>9}")
        for name, n, seconds in rows:
            print(f"{name:<48} {n:>7} {seconds:>9.2f} {n / seconds:>9.2f}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
