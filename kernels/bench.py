"""Speed of the reference ops against the CUDA kernels, on their own inputs at StyleGAN2's shapes.

    python -m kernels.bench [--dtypes fp32,fp16,bf16] [--min-time 0.5]

Needs a GPU (exits 2 without one). Prints upfirdn2d and bias_act at the generator's shapes (random tensors of the
shapes a 256 / 1024 px generator and discriminator feed them): forward and forward+backward milliseconds, ref vs
CUDA. The full generator (images/s, torch.compile, a kernel profile) is measured above this package, by
benchmarks/bench_generator.py: kernels imports nothing of fstrain.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import torch

from kernels.gpu import DTYPES, describe_device, print_table, require_cuda
from kernels.ops import bias_act, upfirdn2d


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


# -- single ops -----------------------------------------------------------------------------------------------------
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


def parse_list(text: str, cast=str) -> list:
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per measurement")
    args = parser.parse_args(argv)
    device = require_cuda("kernels.bench")
    dtypes = parse_list(args.dtypes)
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtype {unknown}; dtypes: {sorted(DTYPES)}")
    torch.backends.cudnn.benchmark = True
    print(f"kernels.bench on {describe_device(device)}")
    # Build (or load) the extension first so its compile time is not measured anywhere.
    from kernels.build import extension_for

    built = extension_for(device)
    print(f"extension: {'cached' if built.cached else 'built'} for sm {','.join(built.archs)} in {built.directory}")

    print("\n## Ops (milliseconds per call)\n")
    print_table(["op", "dtype", "ref fwd", "cuda fwd", "speedup", "ref fwd+bwd", "cuda fwd+bwd", "speedup"],
                op_rows(device, dtypes, args.min_time))
    return 0


if __name__ == "__main__":
    sys.exit(main())
