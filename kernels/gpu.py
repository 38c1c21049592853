"""Shared helpers of the GPU-only programs (kernels.check, kernels.bench)."""
from __future__ import annotations

import sys

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def require_cuda(program: str) -> torch.device:
    """The current CUDA device, or exit 2 with one clear line when there is none."""
    if not torch.cuda.is_available():
        print(f"{program}: no CUDA device is present (torch.cuda.is_available() is False; torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}). Run it on a machine with an NVIDIA GPU.", file=sys.stderr)
        sys.exit(2)
    return torch.device("cuda", torch.cuda.current_device())


def describe_device(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return (f"{props.name} (sm {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain fixed-width table (markdown-compatible pipes)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    sys.stdout.flush()
