"""Cost of the evaluation metrics: Fréchet distance (dense D x D eigh route vs the exact low-rank route for small
sets) and Inception-v3 pool3 feature throughput.

    python benchmarks/bench_metrics.py [--dim 2048] [--samples 16 256 1024 4096] [--images 16] [--size 299]
    python benchmarks/bench_metrics.py --device cuda --images 256                 # on a GPU machine

Features are random normals and the Inception weights are RANDOM (the cost does not depend on the values).
Prints one table: what, n, seconds, rate.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fstrain.metrics.features import InceptionFeatures, build_inception, random_inception_state  # noqa: E402
from fstrain.metrics.frechet import FeatureStatistics, frechet_distance, frechet_distance_between  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 256, 1024, 4096])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows = []
    rng = np.random.default_rng(0)
    real = FeatureStatistics(args.dim).update(rng.normal(size=(max(args.samples), args.dim)))
    for n in args.samples:
        fake = FeatureStatistics(args.dim).update(rng.normal(size=(n, args.dim)) + 0.1)
        route = "low-rank" if fake.factor() is not None else "dense"
        seconds, value = timed(lambda: frechet_distance_between(fake, real))
        rows.append((f"FD stats ({route} route), D={args.dim}", n, seconds, f"{value:.3f}"))
        if route == "low-rank":
            seconds, dense = timed(lambda: frechet_distance(fake.mean(), fake.covariance(), real.mean(),
                                                            real.covariance()))
            rows.append((f"FD stats (dense route), D={args.dim}", n, seconds, f"{dense:.3f}"))

    net = build_inception("torchvision")
    net.load_state_dict(random_inception_state("torchvision"))
    extractor = InceptionFeatures(net, "torchvision", args.size).to(args.device)
    images = torch.rand(args.images, 3, 256, 256, device=args.device) * 2 - 1
    with torch.no_grad():
        extractor(images[: min(2, args.images)])     # warm-up (cuDNN autotune, allocator)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, args.images, args.batch_size):
            extractor(images[i:i + args.batch_size])
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    rows.append((f"Inception pool3 @{args.size}px ({args.device}, batch {args.batch_size})", args.images, seconds,
                 f"{args.images / seconds:.1f} img/s"))

    print(f"{'what':<48} {'n':>6} {'seconds':>9}  result/rate")
    for what, n, seconds, rate in rows:
        print(f"{what:<48} {n:>6} {seconds:>9.3f}  {rate}")


if __name__ == "__main__":
    main()
