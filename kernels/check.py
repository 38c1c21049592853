"""CUDA kernels against the reference on random inputs: forward, backward and second order, every dtype.

    python -m kernels.check [--dtypes fp32,fp16,bf16,fp64] [--skip-large]

Needs a GPU (exits 2 without one). Prints one table row per (op, case, dtype) with the relative error
max|cuda - ref| / max|ref| of the output, of the first-order gradients and of an R1-style second-order
gradient, the reference computed in float64 from the same (rounded) inputs. Output buffers are poisoned with NaN
before each call so that elements a kernel never writes show up. Exits 1 when any row fails.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import torch

from kernels.gpu import DTYPES, describe_device, print_table, require_cuda
from kernels.ops import bias_act, upfirdn2d
from kernels.reference import bias_act_ref, upfirdn2d_ref

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


def blur_kernel(scale: float = 1.0) -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[:, None] * k[None, :]
    return k / k.sum() * scale


@dataclass
class UpfirdnCase:
    name: str
    shape: tuple[int, int, int, int]
    kernel: torch.Tensor
    up: tuple[int, int] = (1, 1)
    down: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    layout: str = "contiguous"  # or channels_last / strided
    large: bool = False  # forward only, float16 only: exercises the grid-stride loop


@dataclass
class BiasActCase:
    name: str
    shape: tuple[int, ...]
    act: str = "lrelu"
    alpha: float = 0.2
    gain: float | None = None
    clamp: float | None = None
    dim: int = 1
    bias: bool = True
    large: bool = False
    extra: dict = field(default_factory=dict)


def odd_kernel(rows: int, cols: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * 7 + cols))


UPFIRDN_CASES = [
    UpfirdnCase("G upconv blur k*4 pad(1,1)", (4, 64, 65, 65), blur_kernel(4), pad=(1, 1, 1, 1)),
    UpfirdnCase("G to_rgb up2 pad(2,1)", (4, 3, 64, 64), blur_kernel(4), up=(2, 2), pad=(2, 1, 2, 1)),
    UpfirdnCase("D conv3 blur pad(2,2)", (4, 64, 64, 64), blur_kernel(), pad=(2, 2, 2, 2)),
    UpfirdnCase("D skip blur pad(1,1)", (4, 64, 64, 64), blur_kernel(), pad=(1, 1, 1, 1)),
    UpfirdnCase("downsample down2 pad(1,1)", (4, 32, 64, 64), blur_kernel(), down=(2, 2), pad=(1, 1, 1, 1)),
    UpfirdnCase("up2 down2", (2, 8, 33, 31), blur_kernel(4), up=(2, 2), down=(2, 2), pad=(2, 1, 2, 1)),
    UpfirdnCase("kernel 3x5, up(3,1) down(1,2)", (2, 5, 17, 23), odd_kernel(3, 5), up=(3, 1), down=(1, 2),
                pad=(1, 2, 0, 3)),
    UpfirdnCase("negative pads", (2, 5, 19, 18), odd_kernel(3, 3), up=(2, 2), pad=(-1, -2, 0, -3)),
    UpfirdnCase("crop + down(3,2)", (2, 5, 27, 26), odd_kernel(2, 2), down=(3, 2), pad=(-2, 1, 1, -1)),
    UpfirdnCase("channels_last input", (4, 16, 32, 32), blur_kernel(4), up=(2, 2), pad=(2, 1, 2, 1),
                layout="channels_last"),
    UpfirdnCase("strided view input", (4, 16, 32, 32), blur_kernel(), pad=(2, 2, 2, 2), layout="strided"),
    UpfirdnCase("grid-stride 335M outputs", (1, 80, 1024, 1024), blur_kernel(4), up=(2, 2), pad=(2, 1, 2, 1),
                large=True),
]

BIAS_ACT_CASES = [
    BiasActCase("StyledConv lrelu", (4, 64, 32, 32)),
    BiasActCase("EqualLinear lrelu (N, C)", (8, 512)),
    BiasActCase("relu gain 2 clamp 0.5 dim 2", (2, 3, 5, 7), act="relu", gain=2.0, clamp=0.5, dim=2),
    BiasActCase("lrelu clamp 256 dim 0", (16, 3, 9), clamp=256.0, dim=0),
    BiasActCase("linear gain 0.5 clamp 0.3", (3, 7, 11), act="linear", gain=0.5, clamp=0.3),
    BiasActCase("linear no bias", (3, 7, 11), act="linear", bias=False),
    BiasActCase("lrelu no bias, alpha 0", (4, 5, 6, 7), alpha=0.0, bias=False),
    BiasActCase("grid-stride 314M elements", (1, 300, 1024, 1024), large=True),
]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    return (got.double() - want).abs().max().item() / max(scale, 1e-30)


def poison(shape, dtype, device, copies: int = 3) -> None:
    """Fill and free blocks of the output's size so the caching allocator hands NaN memory to the next outputs."""
    blocks = [torch.full(shape, float("nan"), dtype=dtype, device=device) for _ in range(copies)]
    del blocks


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def check_upfirdn2d(case: UpfirdnCase, dtype: torch.dtype, device: torch.device, second_order: bool) -> list:
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(case.shape, generator=generator, device=device).to(dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case.layout == "strided":
        x = torch.randn((case.shape[0], case.shape[1], case.shape[2] * 2, case.shape[3] + 3), generator=generator,
                        device=device).to(dtype)[:, :, ::2, 1:-2]
    kernel = case.kernel.to(device)
    args = dict(up=case.up, down=case.down, pad=case.pad)
    want = upfirdn2d_ref(x.double(), kernel.double(), **args)
    poison(want.shape, dtype, device)
    got = upfirdn2d(x, kernel, impl="cuda", **args)
    unwritten = int(torch.isnan(got).sum().item())
    errors = {"forward": relative_error(got, want)}
    if not case.large:
        x_c = x.detach().requires_grad_(True)
        x_r = x.detach().double().requires_grad_(True)
        dy = torch.randn(want.shape, generator=generator, device=device).to(dtype)
        poison(x.shape, dtype, device)
        (dx,) = torch.autograd.grad(upfirdn2d(x_c, kernel, impl="cuda", **args), x_c, dy)
        unwritten += int(torch.isnan(dx).sum().item())
        (dx_ref,) = torch.autograd.grad(upfirdn2d_ref(x_r, kernel.double(), **args), x_r, dy.double())
        errors["backward"] = relative_error(dx, dx_ref)
        if second_order:
            errors["2nd order"] = relative_error(r1_like(lambda t: upfirdn2d(t, kernel, impl="cuda", **args), x_c),
                                                 r1_like(lambda t: upfirdn2d_ref(t, kernel.double(), **args), x_r))
    return [errors, unwritten, got.shape]


def r1_like(op, x: torch.Tensor) -> torch.Tensor:
    """d/dx of |d(sum op(x)^2)/dx|^2: the double backward an R1 penalty takes."""
    (grad,) = torch.autograd.grad(op(x).pow(2).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), x)
    return second


def check_bias_act(case: BiasActCase, dtype: torch.dtype, device: torch.device, second_order: bool) -> list:
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(case.shape, generator=generator, device=device).to(dtype)
    bias = torch.randn(case.shape[case.dim], generator=generator, device=device).to(dtype) if case.bias else None
    args = dict(act=case.act, alpha=case.alpha, gain=case.gain, clamp=case.clamp, dim=case.dim)
    want = bias_act_ref(x.double(), None if bias is None else bias.double(), **args)
    poison(x.shape, dtype, device)
    got = bias_act(x, bias, impl="cuda", **args)
    unwritten = int(torch.isnan(got).sum().item())
    errors = {"forward": relative_error(got, want)}
    if not case.large:
        inputs_c = [x.detach().requires_grad_(True)] + ([bias.detach().requires_grad_(True)] if case.bias else [])
        inputs_r = [t.detach().double().requires_grad_(True) for t in inputs_c]
        dy = torch.randn(case.shape, generator=generator, device=device).to(dtype)
        poison(x.shape, dtype, device)
        grads_c = torch.autograd.grad(bias_act(*inputs_c, impl="cuda", **args), inputs_c, dy)
        grads_r = torch.autograd.grad(bias_act_ref(*inputs_r, **args), inputs_r, dy.double())
        unwritten += sum(int(torch.isnan(g).sum().item()) for g in grads_c)
        errors["backward"] = max(relative_error(c, r) for c, r in zip(grads_c, grads_r))
        if second_order:
            weight = torch.randn(case.shape, generator=generator, device=device).to(dtype)
            bias_c = inputs_c[1] if case.bias else None
            bias_r = inputs_r[1] if case.bias else None
            errors["2nd order"] = relative_error(
                r1_like(lambda t: bias_act(t * weight, bias_c, impl="cuda", **args), inputs_c[0]),
                r1_like(lambda t: bias_act_ref(t * weight.double(), bias_r, **args), inputs_r[0]))
    return [errors, unwritten, got.shape]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", default="fp32,fp16,bf16,fp64", help="comma-separated: fp32,fp16,bf16,fp64")
    parser.add_argument("--skip-large", action="store_true", help="skip the grid-stride cases (several GiB)")
    args = parser.parse_args(argv)
    device = require_cuda("kernels.check")
    dtypes = [DTYPES[name.strip()] for name in args.dtypes.split(",") if name.strip()]
    print(f"kernels.check on {describe_device(device)}")

    rows, failures = [], 0
    jobs = [("upfirdn2d", c, check_upfirdn2d) for c in UPFIRDN_CASES] + \
           [("bias_act", c, check_bias_act) for c in BIAS_ACT_CASES]
    for op, case, run in jobs:
        for dtype in dtypes:
            if case.large and (dtype != torch.float16 or args.skip_large):
                continue
            name = next(k for k, v in DTYPES.items() if v == dtype)
            second_order = dtype in (torch.float32, torch.float64)
            try:
                errors, unwritten, shape = run(case, dtype, device, second_order)
            except Exception as error:  # report and go on: one broken case must not hide the others
                failures += 1
                rows.append([op, case.name, name, "-", "-", "-", "-", f"ERROR {type(error).__name__}: "
                             f"{str(error).splitlines()[0][:80]}"])
                continue
            tolerance = TOLERANCE[dtype]
            ok = unwritten == 0 and all(math.isfinite(e) and e <= tolerance for e in errors.values())
            failures += not ok
            rows.append([op, case.name, name, fmt(errors.get("forward")), fmt(errors.get("backward")),
                         fmt(errors.get("2nd order")), str(unwritten), ("ok" if ok else "FAIL") + f" (tol {tolerance:.0e})"])
            torch.cuda.empty_cache()
    print_table(["op", "case", "dtype", "forward", "backward", "2nd order", "unwritten", "result"], rows)
    print(f"\n{len(rows) - failures}/{len(rows)} passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
