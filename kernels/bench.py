"""Speed of the reference ops, the CUDA kernels and torch.compile: single ops and a full StyleGAN2 generator.

    python -m kernels.bench [--sizes 256,1024] [--batches 1,8,32] [--dtypes fp32,fp16,bf16]
                            [--modes ref,cuda,compile] [--min-time 0.5] [--no-profile]

Needs a GPU (exits 2 without one). Prints, in one run:
1. upfirdn2d and bias_act at the generator's shapes: forward and forward+backward milliseconds, ref vs CUDA;
2. generator images/s for every size x batch x dtype x mode (random weights; speed does not depend on them),
   with the largest |image difference| of the CUDA path and torch.compile against the reference path;
3. a profile of one generator forward on the CUDA path, top kernels by GPU time: what is worth fusing next.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Callable

import torch

from kernels.gpu import DTYPES, describe_device, print_table, require_cuda
from kernels.ops import bias_act, upfirdn2d, using_impl

MODES = ("ref", "cuda", "compile")


def time_cuda(fn: Callable[[], object], min_time: float, warmup: int = 2) -> float:
    """Seconds per call: warm up, then time enough calls to fill `min_time`, with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    calls = 1
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end) / 1000
        if elapsed >= min_time or calls >= 1024:
            return elapsed / calls
        calls = min(1024, max(calls * 2, int(calls * min_time / max(elapsed, 1e-6)) + 1))


def blur_kernel(scale: float, device) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    k = k[:, None] * k[None, :]
    return k / k.sum() * scale


# -- 1. single ops --------------------------------------------------------------------------------------------------
def op_rows(device: torch.device, dtypes: list[str], min_time: float) -> list[list[str]]:
    k4, k1 = blur_kernel(4, device), blur_kernel(1, device)
    biases: dict[tuple, torch.Tensor] = {}

    def zero_bias(x: torch.Tensor) -> torch.Tensor:  # made once per shape/dtype, outside the timed calls
        return biases.setdefault((x.shape[1], x.dtype), torch.zeros(x.shape[1], device=device, dtype=x.dtype))

    cases = [
        # (name, shape, op call taking (x, impl))
        ("upfirdn2d G upconv blur 256px", (8, 256, 257, 257), lambda x, impl: upfirdn2d(x, k4, pad=(1, 1), impl=impl)),
        ("upfirdn2d G upconv blur 1024px", (8, 64, 1025, 1025),
         lambda x, impl: upfirdn2d(x, k4, pad=(1, 1), impl=impl)),
        ("upfirdn2d to_rgb up2 512->1024", (8, 3, 512, 512),
         lambda x, impl: upfirdn2d(x, k4, up=2, pad=(2, 1), impl=impl)),
        ("upfirdn2d D down2 1024->512", (8, 64, 1024, 1024),
         lambda x, impl: upfirdn2d(x, k1, down=2, pad=(1, 1), impl=impl)),
        ("bias_act lrelu 64px x512ch", (8, 512, 64, 64), lambda x, impl: bias_act(x, zero_bias(x), impl=impl)),
        ("bias_act lrelu 1024px x64ch", (8, 64, 1024, 1024), lambda x, impl: bias_act(x, zero_bias(x), impl=impl)),
    ]
    rows = []
    for name, shape, call in cases:
        for dtype_name in dtypes:
            x = torch.randn(shape, device=device, dtype=DTYPES[dtype_name])
            x_grad = x.detach().requires_grad_(True)
            times = {}
            for impl in ("ref", "cuda"):
                times[impl, "fwd"] = time_cuda(lambda: call(x, impl), min_time)
                dy = torch.ones_like(call(x, impl))
                times[impl, "fwd+bwd"] = time_cuda(
                    lambda: torch.autograd.grad(call(x_grad, impl), x_grad, dy), min_time)
            rows.append([name, dtype_name,
                         f"{times['ref', 'fwd'] * 1e3:.3f}", f"{times['cuda', 'fwd'] * 1e3:.3f}",
                         f"{times['ref', 'fwd'] / times['cuda', 'fwd']:.2f}x",
                         f"{times['ref', 'fwd+bwd'] * 1e3:.3f}", f"{times['cuda', 'fwd+bwd'] * 1e3:.3f}",
                         f"{times['ref', 'fwd+bwd'] / times['cuda', 'fwd+bwd']:.2f}x"])
            del x, x_grad
            torch.cuda.empty_cache()
    return rows


# -- 2. full generator ----------------------------------------------------------------------------------------------
def generator_rows(device: torch.device, sizes: list[int], batches: list[int], dtypes: list[str], modes: list[str],
                   min_time: float) -> list[list[str]]:
    from fstrain.models.stylegan2 import Generator  # lazily: the bench is the only kernels code that needs models

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


# -- 3. profile -----------------------------------------------------------------------------------------------------
def profile_generator(device: torch.device, size: int, batch: int, dtype_name: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    from fstrain.models.stylegan2 import Generator

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
    print(f"\n## 3. Profile: generator {size}px, batch {batch}, {dtype_name}, CUDA kernels (one forward)\n")
    print_table(["kernel", "calls", "GPU ms", "share"], rows)


def parse_list(text: str, cast=str) -> list:
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--modes", default="ref,cuda,compile", help="any of ref,cuda,compile")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per measurement")
    parser.add_argument("--no-ops", action="store_true", help="skip the single-op table")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    args = parser.parse_args(argv)
    device = require_cuda("kernels.bench")
    dtypes = parse_list(args.dtypes)
    modes = parse_list(args.modes)
    unknown = [d for d in dtypes if d not in DTYPES] + [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown dtype/mode {unknown}; dtypes: {sorted(DTYPES)}, modes: {list(MODES)}")
    torch.backends.cudnn.benchmark = True
    print(f"kernels.bench on {describe_device(device)}")
    # Build (or load) the extension first so its compile time is not measured anywhere.
    from kernels.build import extension_for

    built = extension_for(device)
    print(f"extension: {'cached' if built.cached else 'built'} for sm {','.join(built.archs)} in {built.directory}")

    if not args.no_ops:
        print("\n## 1. Ops (milliseconds per call)\n")
        print_table(["op", "dtype", "ref fwd", "cuda fwd", "speedup", "ref fwd+bwd", "cuda fwd+bwd", "speedup"],
                    op_rows(device, dtypes, args.min_time))

    print("\n## 2. Generator images/s (no_grad, random weights, stored noise)\n")
    rows = generator_rows(device, parse_list(args.sizes, int), parse_list(args.batches, int), dtypes, modes,
                          args.min_time)
    print()
    print_table(["size", "batch", "dtype", "ref img/s", "cuda img/s", "compile img/s", "max|cuda-ref|",
                 "max|compile-ref|"], rows)

    if not args.no_profile:
        sizes = parse_list(args.sizes, int)
        profile_generator(device, max(sizes), 8, "fp16" if "fp16" in dtypes else dtypes[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
