"""Public ops and the choice between the reference ops and the compiled CUDA kernels.

`impl="ref"` always uses the PyTorch reference. `impl="cuda"` uses the compiled kernels and raises when it cannot.
`impl="auto"` uses CUDA when the tensor is on a GPU, the arguments are ones the kernels support and the extension
builds (on first use, cached on disk), else the reference; it logs which it chose and why in one line, once per
process and message (tensors off the GPU give one line for every op). A process whose driver reports for it (a Ray
worker: cluster.train stages, batch.stylize actors) calls `quiet_routes()` or runs with KERNELS_ROUTE_LOG=quiet:
its lines go to debug and `announcements()` hands them to the driver, which prints each once per job. `using_impl("ref")` switches what "auto" means inside a block (benchmarks compare both paths
through an unchanged model that way). `route` makes that decision from the device alone (pure, so tests check
every branch without a GPU); `choose` carries it out.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Iterator, NamedTuple

import torch

from kernels.autograd import BiasAct, Upfirdn2d
from kernels.backends import ACT_CODES, CudaBackend
from kernels.reference import ACTIVATIONS, as_padding, as_pair, bias_act_ref, upfirdn2d_ref

log = logging.getLogger("kernels")

IMPLS = ("auto", "ref", "cuda")
_auto_means = "auto"
_announced: set[str] = set()
_quiet = os.environ.get("KERNELS_ROUTE_LOG", "") == "quiet"


@contextlib.contextmanager
def using_impl(impl: str) -> Iterator[None]:
    """Make impl="auto" mean `impl` ("auto", "ref" or "cuda") inside the block."""
    global _auto_means
    check_impl(impl)
    previous, _auto_means = _auto_means, impl
    try:
        yield
    finally:
        _auto_means = previous


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def announce(op: str, message: str) -> None:
    """Log `message` the first time this process sees it (`op` is kept for callers; the message names it)."""
    if message not in _announced:
        _announced.add(message)
        (log.debug if _quiet else log.warning)("kernels: %s", message)


def quiet_routes(quiet: bool = True) -> None:
    """Route lines go to debug in this process (its driver prints `announcements()` once for the whole job)."""
    global _quiet
    _quiet = quiet


def announcements() -> list[str]:
    """Every routing line this process has announced, for a driver to print once per job."""
    return sorted(_announced)


def cuda_backend(device: torch.device) -> CudaBackend:
    """The compiled backend for `device`; raises BuildError (from kernels.build) when it cannot be had."""
    from kernels.build import extension_for  # imported lazily: nothing is built or loaded at import time

    return CudaBackend(extension_for(device).module)


class Route(NamedTuple):
    """Which path one call takes. `reason` is the line impl="auto" announces; None when the caller chose the
    path explicitly (impl="ref" or "cuda"), which also means a failed CUDA build raises instead of falling back."""
    use_cuda: bool
    reason: str | None


def route(op: str, device: torch.device, impl: str, unsupported: str | None) -> Route:
    """The routing decision from the tensor's device, the impl and why the kernels cannot take the call (if so).

    Pure (it builds, loads and allocates nothing), so every branch can be checked for any device on any machine.
    """
    check_impl(impl)
    if impl == "auto":
        impl = _auto_means
    if impl == "ref":
        return Route(False, None)
    is_cuda = device.type == "cuda"
    if impl == "cuda":
        if not is_cuda:
            raise ValueError(f"kernels: impl='cuda' for {op} needs a CUDA tensor, got one on {device}")
        if unsupported:
            raise ValueError(f"kernels: impl='cuda' for {op} does not support {unsupported}; use impl='ref'")
        return Route(True, None)
    if not is_cuda:
        return Route(False, f"using reference {op} (tensor on {device.type})")
    if unsupported:
        return Route(False, f"using reference {op} ({unsupported})")
    return Route(True, f"using CUDA {op} (tensor on {device})")


def upfirdn2d_unsupported(kernel: torch.Tensor) -> str | None:
    """Why the upfirdn2d kernels cannot take this call, or None (they compute no gradient for the FIR kernel)."""
    return "a kernel that requires grad" if kernel.requires_grad else None


def bias_act_unsupported(x: torch.Tensor, act: str, alpha: float, gain: float, dim: int) -> str | None:
    """Why the bias_act kernels cannot take this call, or None."""
    if gain <= 0 or not math.isfinite(gain):
        return f"gain={gain} (the kernels need a positive gain)"
    if act == "lrelu" and alpha < 0:
        return f"alpha={alpha} (the kernels need alpha >= 0)"
    if x.ndim == 0 or not -x.ndim <= dim < x.ndim:
        return f"dim={dim} for x of shape {tuple(x.shape)}"
    return None


def choose(op: str, x: torch.Tensor, impl: str, unsupported: str | None) -> CudaBackend | None:
    """The CUDA backend to use, or None for the reference. `unsupported` says why the kernels can't take the call."""
    decision = route(op, x.device, impl, unsupported)
    if not decision.use_cuda:
        if decision.reason is not None:   # off the GPU every op falls back for the same reason: one line for all
            announce(op, decision.reason if x.device.type == "cuda" else
                     f"using the reference ops (tensors on {x.device.type}; the CUDA kernels need a GPU)")
        return None
    if decision.reason is None:  # impl="cuda": a BuildError propagates with the compiler's message
        return cuda_backend(x.device)
    from kernels.build import BuildError

    try:
        backend = cuda_backend(x.device)
    except BuildError as error:
        first_line = next((line for line in str(error).splitlines() if line.strip()), "unknown error")
        announce(op, f"using reference {op} (CUDA build failed: {first_line}; see python -m kernels.build)")
        return None
    announce(op, decision.reason)
    return backend


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up=1, down=1, pad=(0, 0), impl: str = "auto") -> torch.Tensor:
    """Upsample by zero insertion, pad (negative crops), FIR-filter with `kernel` (true convolution), downsample.

    x: (N, C, H, W); kernel: (kh, kw); up/down: int or (x, y); pad: int, (p0, p1) for both axes or
    (x0, x1, y0, y1). Output height is (H*up + pad_y0 + pad_y1 - kh + down) // down.
    """
    up, down, pad = as_pair(up), as_pair(down), as_padding(pad)
    backend = choose("upfirdn2d", x, impl, upfirdn2d_unsupported(kernel))
    if backend is None:
        return upfirdn2d_ref(x, kernel, up=up, down=down, pad=pad)
    if x.ndim != 4 or kernel.ndim != 2:
        raise ValueError(f"upfirdn2d expects x (N,C,H,W) and a 2-D kernel; got {tuple(x.shape)} and {tuple(kernel.shape)}")
    if kernel.device != x.device:
        kernel = kernel.to(x.device)
    return Upfirdn2d.apply(x, kernel, up, down, pad, backend)


def bias_act(x: torch.Tensor, bias: torch.Tensor | None = None, act: str = "lrelu", alpha: float = 0.2,
             gain: float | None = None, clamp: float | None = None, dim: int = 1, impl: str = "auto") -> torch.Tensor:
    """gain * act(x + bias) clamped to [-clamp, clamp]; bias broadcasts along `dim`; gain defaults to sqrt(2)
    for relu/lrelu and 1 for linear."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
    gain = ACTIVATIONS[act][1] if gain is None else float(gain)
    backend = choose("bias_act", x, impl, bias_act_unsupported(x, act, alpha, gain, dim))
    if backend is None:
        return bias_act_ref(x, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
    dim = dim % x.ndim
    if bias is not None:
        if bias.ndim != 1 or bias.shape[0] != x.shape[dim]:
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match dim {dim} of x {tuple(x.shape)}")
        if bias.device != x.device:
            bias = bias.to(x.device)
    assert act in ACT_CODES
    return BiasAct.apply(x, bias, act, float(alpha), gain, clamp, dim, backend)
