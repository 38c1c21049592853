"""Autograd for the compiled ops, with every backward written in terms of the same ops.

* upfirdn2d is linear in x: its gradient is upfirdn2d of the output gradient with the flipped kernel, up and down
  swapped and the padding adjusted so the result has x's size. That gradient is again an `Upfirdn2d`, so any
  order of derivative works (R1 needs second order).
* bias_act's gradient is `BiasActGrad(dy, y)` = dy * slope(y). It is linear in dy and its slope is piecewise
  constant in y, so its own gradient is `BiasActGrad` again with zero gradient for y: double backward works
  without a second-order kernel.

The kernel of upfirdn2d is treated as a constant (StyleGAN's blur kernels are buffers); the dispatcher in
kernels/ops.py sends calls whose kernel requires grad to the reference op instead.
"""
from __future__ import annotations

import torch

from kernels.backends import Pad4, Pair


def upfirdn2d_grad_padding(in_size: int, out_size: int, up: int, down: int, pad0: int, taps: int) -> tuple[int, int]:
    """Padding along one axis for the gradient pass (up and down swapped, kernel flipped)."""
    return taps - pad0 - 1, in_size * up - out_size * down + pad0 - up + 1


class Upfirdn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, up: Pair, down: Pair, pad: Pad4, backend) -> torch.Tensor:
        y = backend.upfirdn2d(x, kernel, up, down, pad)
        ctx.kernel, ctx.up, ctx.down, ctx.pad, ctx.backend = kernel, up, down, pad, backend
        ctx.in_size = (x.shape[2], x.shape[3])
        ctx.out_size = (y.shape[2], y.shape[3])
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        dx = None
        if ctx.needs_input_grad[0]:
            kernel_h, kernel_w = ctx.kernel.shape
            (in_h, in_w), (out_h, out_w) = ctx.in_size, ctx.out_size
            pad_x0, _, pad_y0, _ = ctx.pad
            grad_x0, grad_x1 = upfirdn2d_grad_padding(in_w, out_w, ctx.up[0], ctx.down[0], pad_x0, kernel_w)
            grad_y0, grad_y1 = upfirdn2d_grad_padding(in_h, out_h, ctx.up[1], ctx.down[1], pad_y0, kernel_h)
            flipped = torch.flip(ctx.kernel, [0, 1])
            dx = Upfirdn2d.apply(dy, flipped, ctx.down, ctx.up, (grad_x0, grad_x1, grad_y0, grad_y1), ctx.backend)
            assert dx.shape[2:] == torch.Size(ctx.in_size), "upfirdn2d gradient padding is inconsistent"
        return dx, None, None, None, None, None


class BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, act: str, alpha: float, gain: float,
                clamp: float | None, dim: int, backend) -> torch.Tensor:
        y = backend.bias_act(x, bias, act, alpha, gain, clamp, dim)
        ctx.act, ctx.alpha, ctx.gain, ctx.clamp, ctx.dim, ctx.backend = act, alpha, gain, clamp, dim, backend
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.linear = act == "linear" and (clamp is None or clamp < 0)
        ctx.save_for_backward(None if ctx.linear else y)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (y,) = ctx.saved_tensors
        if ctx.linear:
            dx = dy * ctx.gain if ctx.gain != 1 else dy
        else:
            dx = BiasActGrad.apply(dy, y, ctx.act, ctx.alpha, ctx.gain, ctx.clamp, ctx.backend)
        dbias = None
        if ctx.needs_input_grad[1]:
            reduce_dims = [d for d in range(dx.ndim) if d != ctx.dim]
            dbias = dx.sum(reduce_dims).to(ctx.bias_dtype)
        return (dx if ctx.needs_input_grad[0] else None), dbias, None, None, None, None, None, None


class BiasActGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dy: torch.Tensor, y: torch.Tensor, act: str, alpha: float, gain: float, clamp: float | None,
                backend) -> torch.Tensor:
        ctx.save_for_backward(y)
        ctx.act, ctx.alpha, ctx.gain, ctx.clamp, ctx.backend = act, alpha, gain, clamp, backend
        return backend.bias_act_grad(dy, y, act, alpha, gain, clamp)

    @staticmethod
    def backward(ctx, d_dx: torch.Tensor):
        (y,) = ctx.saved_tensors
        d_dy = BiasActGrad.apply(d_dx, y, ctx.act, ctx.alpha, ctx.gain, ctx.clamp, ctx.backend)
        # The slope is piecewise constant in y: its derivative is zero almost everywhere.
        return d_dy, None, None, None, None, None, None
