"""Run the CUDA kernels' per-element code on the CPU, for tests on machines without a GPU.

csrc/upfirdn2d_core.h and csrc/bias_act_core.h hold the arithmetic every GPU thread performs (index math, loop
bounds, tap order, activation slopes). csrc/host/host_harness.cpp loops that same code over all elements; this
module compiles it with the host C++ compiler (about a second) and wraps it as a backend for kernels/autograd.py,
so the kernels' math and the autograd formulas around them are checked end to end without CUDA. Only float32 and
float64 here; half/bf16 differ only in the load/store conversions.
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from kernels.backends import ACT_CODES, Pad4, Pair
from kernels.reference import upfirdn2d_output_size

CSRC = Path(__file__).resolve().parent / "csrc"
HARNESS = CSRC / "host" / "host_harness.cpp"
HEADERS = (CSRC / "host_device.h", CSRC / "upfirdn2d_core.h", CSRC / "bias_act_core.h")


class HarnessUnavailable(RuntimeError):
    """No host C++ compiler, or the harness did not compile."""


def compile_harness(directory: Path | None = None) -> ctypes.CDLL:
    if not HARNESS.exists():
        raise HarnessUnavailable(f"{HARNESS} is not installed (it ships with the source tree only)")
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise HarnessUnavailable("no host C++ compiler (c++/g++) on PATH")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (HARNESS, *HEADERS))).hexdigest()[:16]
    directory = Path(directory or tempfile.gettempdir()) / f"fstrain-kernels-host-{digest}"
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / "host_harness.so"
    if not library.exists():
        partial = directory / f"host_harness.{id(directory)}.so"
        result = subprocess.run([compiler, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", str(HARNESS),
                                 "-o", str(partial)], capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessUnavailable(f"host harness failed to compile:\n{result.stderr}")
        partial.replace(library)
    return ctypes.CDLL(str(library))


def _ptr(array: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(0 if array is None else array.ctypes.data)


class HostHarnessBackend:
    """A kernels/autograd.py backend that runs the kernels' per-element code on CPU tensors."""

    name = "host-harness"

    def __init__(self, library: ctypes.CDLL):
        self.lib = library

    def upfirdn2d(self, x: torch.Tensor, kernel: torch.Tensor, up: Pair, down: Pair, pad: Pad4) -> torch.Tensor:
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"the host harness takes float32/float64, got {x.dtype}")
        n, c, in_h, in_w = x.shape
        kernel_h, kernel_w = kernel.shape
        out_h = upfirdn2d_output_size(in_h, up[1], down[1], pad[2], pad[3], kernel_h)
        out_w = upfirdn2d_output_size(in_w, up[0], down[0], pad[0], pad[1], kernel_w)
        xa = x.detach().numpy()  # any strides: the kernel code reads through them
        taps = np.ascontiguousarray(kernel.detach().to(x.dtype).numpy())
        out = np.empty((n, c, out_h, out_w), dtype=xa.dtype)
        sizes = np.array([n, c, in_h, in_w, out_h, out_w], dtype=np.int64)
        strides = np.array([s // xa.itemsize for s in xa.strides], dtype=np.int64)
        config = np.array([up[0], up[1], down[0], down[1], pad[0], pad[2], kernel_h, kernel_w], dtype=np.int32)
        fn = self.lib.fsk_upfirdn2d_f64 if xa.dtype == np.float64 else self.lib.fsk_upfirdn2d_f32
        fn(_ptr(xa), _ptr(taps), _ptr(out), _ptr(sizes), _ptr(strides), _ptr(config))
        return torch.from_numpy(out)

    def _bias_act(self, x: torch.Tensor, bias: torch.Tensor | None, saved: torch.Tensor | None, act: str,
                  alpha: float, gain: float, clamp: float | None, dim: int, mode: int) -> torch.Tensor:
        xa = np.ascontiguousarray(x.detach().to(torch.float64).numpy())
        ba = None if bias is None else np.ascontiguousarray(bias.detach().to(torch.float64).numpy())
        sa = None if saved is None else np.ascontiguousarray(saved.detach().to(torch.float64).numpy())
        out = np.empty_like(xa)
        inner = int(np.prod(xa.shape[dim + 1:], dtype=np.int64))
        self.lib.fsk_bias_act_f64(
            _ptr(xa), _ptr(ba), _ptr(sa), _ptr(out), ctypes.c_int64(xa.size), ctypes.c_int64(max(inner, 1)),
            ctypes.c_int64(xa.shape[dim]), ctypes.c_int(ACT_CODES[act]), ctypes.c_int(mode), ctypes.c_double(alpha),
            ctypes.c_double(gain), ctypes.c_double(-1.0 if clamp is None or clamp < 0 else clamp))
        return torch.from_numpy(out).to(x.dtype)

    def bias_act(self, x, bias, act, alpha, gain, clamp, dim):
        return self._bias_act(x, bias, None, act, alpha, gain, clamp, dim, mode=0)

    def bias_act_grad(self, dy, y, act, alpha, gain, clamp):
        return self._bias_act(dy, None, y, act, alpha, gain, clamp, 0, mode=1)
