"""The raw (autograd-free) forward kernels behind kernels/autograd.py, in two interchangeable backends.

`CudaBackend` calls the compiled extension; `ReferenceBackend` computes exactly the same quantities in PyTorch —
including the bias_act gradient read off the saved output, the formula the CUDA kernel uses. Running the autograd
Functions on the reference backend is how the CUDA path's backward math is tested on machines without a GPU.
"""
from __future__ import annotations

from types import ModuleType

import torch

from kernels.reference import ACTIVATIONS, bias_act_ref, upfirdn2d_ref

# Activation codes shared with csrc/bias_act.cu.
ACT_CODES = {"linear": 0, "relu": 1, "lrelu": 2}

Pair = tuple[int, int]
Pad4 = tuple[int, int, int, int]


class ReferenceBackend:
    name = "ref"

    def upfirdn2d(self, x: torch.Tensor, kernel: torch.Tensor, up: Pair, down: Pair, pad: Pad4) -> torch.Tensor:
        return upfirdn2d_ref(x, kernel, up=up, down=down, pad=pad)

    def bias_act(self, x: torch.Tensor, bias: torch.Tensor | None, act: str, alpha: float, gain: float,
                 clamp: float | None, dim: int) -> torch.Tensor:
        return bias_act_ref(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)

    def bias_act_grad(self, dy: torch.Tensor, y: torch.Tensor, act: str, alpha: float, gain: float,
                      clamp: float | None) -> torch.Tensor:
        """dy * d(output)/d(input), read off the saved output y (valid because gain > 0)."""
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
        def full(value: float) -> torch.Tensor:
            return torch.full_like(y, value)

        if act == "linear":
            slope = full(gain)
        elif act == "relu":
            slope = torch.where(y > 0, full(gain), full(0.0))
        else:
            slope = torch.where(y > 0, full(gain), full(gain * alpha))
        if clamp is not None and clamp >= 0:
            # The saved y went through y's dtype: compare it with the clamp rounded the same way.
            stored_clamp = torch.tensor(clamp, dtype=y.dtype).item()
            slope = torch.where((y < stored_clamp) & (y > -stored_clamp), slope, full(0.0))
        return dy * slope


class CudaBackend:
    name = "cuda"

    def __init__(self, module: ModuleType):
        self.module = module

    def upfirdn2d(self, x: torch.Tensor, kernel: torch.Tensor, up: Pair, down: Pair, pad: Pad4) -> torch.Tensor:
        pad_x0, pad_x1, pad_y0, pad_y1 = pad
        return self.module.upfirdn2d(x, kernel, up[0], up[1], down[0], down[1], pad_x0, pad_x1, pad_y0, pad_y1)

    def bias_act(self, x: torch.Tensor, bias: torch.Tensor | None, act: str, alpha: float, gain: float,
                 clamp: float | None, dim: int) -> torch.Tensor:
        return self.module.bias_act(x, bias, None, dim, ACT_CODES[act], float(alpha), float(gain),
                                    -1.0 if clamp is None or clamp < 0 else float(clamp), 0)

    def bias_act_grad(self, dy: torch.Tensor, y: torch.Tensor, act: str, alpha: float, gain: float,
                      clamp: float | None) -> torch.Tensor:
        return self.module.bias_act(dy, None, y, 0, ACT_CODES[act], float(alpha), float(gain),
                                    -1.0 if clamp is None or clamp < 0 else float(clamp), 1)
