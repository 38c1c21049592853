"""Plain-PyTorch reference implementations of the StyleGAN2 ops.

These are the ground truth the CUDA kernels are checked against, and the implementation used on CPU.
They are built from differentiable torch ops only, so first- and second-order gradients (R1) just work.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def as_pair(value) -> tuple[int, int]:
    """An int or (x, y) pair as (x, y)."""
    if isinstance(value, int):
        return value, value
    x, y = value
    return int(x), int(y)


def as_padding(pad) -> tuple[int, int, int, int]:
    """Padding as (x0, x1, y0, y1). Accepts an int, rosinality's (p0, p1) applied to both axes, or 4 values."""
    if isinstance(pad, int):
        return pad, pad, pad, pad
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        return pad[0], pad[1], pad[0], pad[1]
    if len(pad) == 4:
        return pad
    raise ValueError(f"pad must be an int, (p0, p1) or (x0, x1, y0, y1); got {pad!r}")


def upfirdn2d_output_size(in_size: int, up: int, down: int, pad0: int, pad1: int, taps: int) -> int:
    return (in_size * up + pad0 + pad1 - taps + down) // down


def upfirdn2d_ref(x: torch.Tensor, kernel: torch.Tensor, up=1, down=1, pad=(0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop), FIR filter (true convolution), downsample.

    x: (N, C, H, W); kernel: (kh, kw). Output height is (H*up + pad_y0 + pad_y1 - kh + down) // down.
    """
    if x.ndim != 4 or kernel.ndim != 2:
        raise ValueError(f"upfirdn2d expects x (N,C,H,W) and a 2-D kernel; got {tuple(x.shape)} and {tuple(kernel.shape)}")
    up_x, up_y = as_pair(up)
    down_x, down_y = as_pair(down)
    pad_x0, pad_x1, pad_y0, pad_y1 = as_padding(pad)
    n, c, h, w = x.shape

    # Zero insertion: each pixel is followed by (up - 1) zeros along each axis.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up_x - 1, 0, 0, 0, up_y - 1])
    x = x.reshape(n, c, h * up_y, w * up_x)

    # Positive padding pads with zeros, negative padding crops.
    x = F.pad(x, [max(pad_x0, 0), max(pad_x1, 0), max(pad_y0, 0), max(pad_y1, 0)])
    x = x[:, :, max(-pad_y0, 0): x.shape[2] - max(-pad_y1, 0), max(-pad_x0, 0): x.shape[3] - max(-pad_x1, 0)]

    # conv2d is cross-correlation; flipping the kernel makes it a true convolution.
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down_y, ::down_x]


ACTIVATIONS = {
    # name: (function(x, alpha), default gain)
    "linear": (lambda x, alpha: x, 1.0),
    "relu": (lambda x, alpha: F.relu(x), math.sqrt(2)),
    "lrelu": (lambda x, alpha: F.leaky_relu(x, alpha), math.sqrt(2)),
}


def bias_act_ref(x: torch.Tensor, bias: torch.Tensor | None = None, act: str = "lrelu", alpha: float = 0.2,
                 gain: float | None = None, clamp: float | None = None, dim: int = 1) -> torch.Tensor:
    """gain * act(x + bias), optionally clamped to [-clamp, clamp]. bias broadcasts along `dim`."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    fn, default_gain = ACTIVATIONS[act]
    gain = default_gain if gain is None else float(gain)
    if bias is not None:
        if bias.ndim != 1 or bias.shape[0] != x.shape[dim]:
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match dim {dim} of x {tuple(x.shape)}")
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + bias.to(x.dtype).reshape(shape)
    x = fn(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x
