"""Speed of a full StyleGAN2 generator on the reference ops, the CUDA kernels and torch.compile.

    python benchmarks/bench_generator.py [--sizes 256,1024] [--batches 1,8,32] [--dtypes fp32,fp16,bf16]
                                         [--modes ref,cuda,compile] [--min-time 0.5] [--no-profile]

Needs a GPU (exits 2 without one). Prints generator images/s for every size x batch x dtype x mode (random weights;
speed does not depend on them), with the largest |image difference| of the CUDA path and torch.compile against the
reference path, then a profile of one forward on the CUDA path, top kernels by GPU time (what to fuse next).
The single ops alone: python -m kernels.bench.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from fstrain.models.stylegan2 import Generator
from kernels.bench import parse_list, time_cuda
from kernels.gpu import DTYPES, describe_device, print_table, require_cuda
from kernels.ops import using_impl

MODES = ("ref", "cuda", "compile")


# -- images/s ----------------------------------------------------------------------------------------------------
def generator_rows(device: torch.device, sizes: list[int], batches: list[int], dtypes: list[str], modes: list[str],
                   min_time: float) -> list[list[str]]:
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    rows = []
    for size in sizes:
        base = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=2).eval()
        for dtype_name in dtypes:
            g = copy.deepcopy(base).to(device=device, dtype=DTYPES[dtype_name])
            compiled = torch.compile(g) if "compile" in modes else None
            for batch in batches:
                z = torch.randn(batch, 512, device=device, generator=torch.Generator(device=device).manual_seed(0))
                z = z.to(DTYPES[dtype_name])
                speeds, images = {}, {}
                for mode in modes:
                    model = compiled if mode == "compile" else g
                    impl = "cuda" if mode == "cuda" else "ref"

                    def render():
                        with torch.no_grad(), using_impl(impl):
                            return model([z], randomize_noise=False)[0]

                    try:
                        started = time.monotonic()
                        images[mode] = render().float()  # first call: compiles in compile mode
                        first_call = time.monotonic() - started
                        speeds[mode] = (batch / time_cuda(render, min_time), first_call)
                    except torch.cuda.OutOfMemoryError:
                        speeds[mode] = None
                    torch.cuda.empty_cache()
                row = [str(size), str(batch), dtype_name]
                for mode in MODES:
                    if mode not in modes:
                        row.append("-")
                    elif speeds.get(mode) is None:
                        row.append("OOM")
                    else:
                        row.append(f"{speeds[mode][0]:.1f}" + (f" (compile {speeds[mode][1]:.0f} s)"
                                                               if mode == "compile" else ""))
                for mode in ("cuda", "compile"):
                    if mode in images and "ref" in images:
                        row.append(f"{(images[mode] - images['ref']).abs().max().item():.1e}")
                    else:
                        row.append("-")
                rows.append(row)
                print("  " + " | ".join(row), flush=True)  # progress: this part takes minutes
            del g, compiled
            torch.cuda.empty_cache()
    return rows


# -- profile --------------------------------------------------------------------------------------------------------
def profile_generator(device: torch.device, size: int, batch: int, dtype_name: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    g = Generator(size).eval().to(device=device, dtype=DTYPES[dtype_name])
    z = torch.randn(batch, 512, device=device, dtype=DTYPES[dtype_name])
    with torch.no_grad(), using_impl("cuda"):
        for _ in range(2):
            g([z], randomize_noise=False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            g([z], randomize_noise=False)
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    rows = [[e.key[:70], str(e.count), f"{e.self_device_time_total / 1e3:.2f}",
             f"{100 * e.self_device_time_total / total:.1f}%"] for e in events[:15]]
    print(f"\n## Profile: generator {size}px, batch {batch}, {dtype_name}, CUDA kernels (one forward)\n")
    print_table(["kernel", "calls", "GPU ms", "share"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_generator.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--modes", default="ref,cuda,compile", help="any of ref,cuda,compile")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    args = parser.parse_args(argv)
    device = require_cuda("bench_generator")
    dtypes, modes = parse_list(args.dtypes), parse_list(args.modes)
    unknown = [d for d in dtypes if d not in DTYPES] + [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown dtype/mode {unknown}; dtypes: {sorted(DTYPES)}, modes: {list(MODES)}")
    torch.backends.cudnn.benchmark = True
    print(f"bench_generator on {describe_device(device)}")
    from kernels.build import extension_for

    built = extension_for(device)   # built (or loaded) first so its compile time is not measured anywhere
    print(f"extension: {'cached' if built.cached else 'built'} for sm {','.join(built.archs)} in {built.directory}")
    print("\n## Generator images/s (no_grad, random weights, stored noise)\n")
    rows = generator_rows(device, parse_list(args.sizes, int), parse_list(args.batches, int), dtypes, modes,
                          args.min_time)
    print()
    print_table(["size", "batch", "dtype", "ref img/s", "cuda img/s", "compile img/s", "max|cuda-ref|",
                 "max|compile-ref|"], rows)
    if not args.no_profile:
        profile_generator(device, max(parse_list(args.sizes, int)), 8, "fp16" if "fp16" in dtypes else dtypes[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
