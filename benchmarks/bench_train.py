"""Seconds per fine-tuning step (D + lazy R1 + G phase of `fstrain.train`), printed as a table.

    python benchmarks/bench_train.py                                   # tiny 32 px config on CPU
    python benchmarks/bench_train.py --device cuda --size 256 1024 --batch 4 8 --precision bf16

Models are RANDOM (written by `fstrain.models.init` into a temp root: full channel table at 256/1024, VGG LPIPS
and an IR-SE50 identity net there, as the style configs use); the style dataset and level-3 pairs are synthetic
PNGs. Weights do not change the cost of a step, so the figures hold for the official models.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, nargs="+", default=[32], help="32 = configs/tiny.yaml's models")
    parser.add_argument("--batch", type=int, nargs="+", default=[4])
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no")
    parser.add_argument("--mode", default="sc+pc", choices=("baseline", "sc", "pc", "sc+pc"))
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return parser.parse_args()


def synthetic_png(seed: int, size: int) -> bytes:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)      # smooth blobs, PNG-compressible like art
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def build_root(root: Path, size: int, style_dim: int, batch: int) -> None:
    import numpy as np
    import torch
    from fstrain.data.shards import ShardWriter
    from fstrain.models.checkpoints import load_generator
    from fstrain.models.init import init_models

    if size == 32:   # the models configs/tiny.yaml and the tests use
        init_models(root / "models", size=32, style_dim=style_dim, n_mlp=2, channel_multiplier=1, channel_max=32,
                    encoder_depth="tiny", identity="tiny", lpips_net="alex")
    else:            # the official architecture (config-f), random weights
        init_models(root / "models", size=size, encoder_depth="tiny", identity="irse50", lpips_net="vgg")
    count = max(16, 2 * batch)
    with ShardWriter(str(root / "datasets" / "bench"), max_samples=64) as writer:
        for i in range(count):
            writer.write({"__key__": f"s{i:05d}", "png": synthetic_png(i, size), "json": {"i": i}})
    g = load_generator(str(root / "models" / "generator.pt")).generator
    with torch.no_grad():
        w = g.get_latent(torch.randn(count, g.style_dim)).unsqueeze(1).repeat(1, g.n_latent, 1).numpy()
    with ShardWriter(str(root / "pairs" / "bench" / "level3"), max_samples=64) as writer:
        for i in range(count):
            writer.write({"__key__": f"s{i:05d}", "s.png": synthetic_png(i, size), "p.png": synthetic_png(10_000 + i, size),
                          "w_plus.npy": w[i].astype(np.float32), "json": {"level": 3}})


def config_for(size: int, batch: int, precision: str, steps: int):
    from fstrain.config import load_config
    from fstrain.settings import PipelineConfig
    base = "tiny.yaml" if size == 32 else "styles/cartoon.yaml"
    config = load_config(str(REPO / "configs" / base), PipelineConfig)
    models = config.models
    if size != 32:   # init writes fixed file names; the style configs name the official files
        models = dataclasses.replace(models, base_generator="models/generator.pt",
                                     identity="models/identity.pth", identity_kind="auto",
                                     lpips_backbone="models/lpips_vgg_backbone_RANDOM.pth")
    return dataclasses.replace(
        config, models=models, data=dataclasses.replace(config.data, image_size=size, batch_size=batch),
        train=dataclasses.replace(config.train, mixed_precision=precision, steps=steps,
                                  checkpoint_every=10 ** 9, sample_every=10 ** 9))


def time_steps(config, root: Path, mode: str, warmup: int, steps: int) -> float:
    import torch
    from fstrain.train.loop import FineTuneRun

    run = FineTuneRun(config, style="bench", mode=mode, root=str(root), run_id="bench")

    def sync() -> None:
        if run.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        run.train_step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        run.train_step()
    sync()
    return (time.perf_counter() - started) / steps


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""     # before torch initialises CUDA
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    rows = []
    for size in args.size:
        for batch in args.batch:
            with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
                root = Path(tmp)
                build_root(root, size, 512, batch)
                config = config_for(size, batch, args.precision, args.warmup + args.steps)
                sec = time_steps(config, root, args.mode, args.warmup, args.steps)
            rows.append((size, batch, args.precision, args.mode, sec, batch / sec))
            print(f"  done: {size} px batch {batch}: {sec:.3f} s/step", file=sys.stderr, flush=True)
    print(f"\nfstrain.train step time on {device_name} ({args.steps} steps after {args.warmup} warm-up)")
    print(f"{'size':>5} {'batch':>5} {'precision':>9} {'mode':>8} {'s/step':>8} {'img/s':>7}")
    for size, batch, precision, mode, sec, ips in rows:
        print(f"{size:>5} {batch:>5} {precision:>9} {mode:>8} {sec:>8.3f} {ips:>7.2f}")


if __name__ == "__main__":
    main()
