"""Dispatch between the reference ops and the compiled CUDA kernels."""
from __future__ import annotations

import torch

from kernels.reference import bias_act_ref, upfirdn2d_ref


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up=1, down=1, pad=(0, 0), impl: str = "auto") -> torch.Tensor:
    return upfirdn2d_ref(x, kernel, up=up, down=down, pad=pad)


def bias_act(x: torch.Tensor, bias: torch.Tensor | None = None, act: str = "lrelu", alpha: float = 0.2,
             gain: float | None = None, clamp: float | None = None, dim: int = 1, impl: str = "auto") -> torch.Tensor:
    return bias_act_ref(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
