"""What kind of model file this is, and reading it without running code from it: one place for every format.

Formats, told apart by their first bytes:
- `torch-zip`    torch.save's zip archive (PyTorch >= 1.6: rosinality .pt, pSp/e4e .pt, arcface .pth, ...)
- `torch-legacy` torch.save's pre-1.6 stream (a pickled magic number first)
- `pickle`       a plain pickle: NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (`.pkl`)

torch files are read with `torch.load(weights_only=True)`; pickles with `fstrain.models.nvidia_pkl`'s restricted
unpickler. Every failure is one `CheckpointError` line naming the file and what was expected. None of them advises
`weights_only=False`: that would run whatever code the file carries. Adding a format means one entry in `sniff`
and one reader in `read_weights`.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch

from fstrain.models.errors import EXPECTED, CheckpointError, refused_message  # noqa: F401 (EXPECTED re-exported)

TORCH_ZIP = "torch-zip"
TORCH_LEGACY = "torch-legacy"
PICKLE = "pickle"

_ZIP_MAGIC = b"PK\x03\x04"
# torch's legacy stream opens with the pickled int 0x1950a86a20f9469cfc6c (LONG1, 10 bytes little endian).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


Source = bytes | str | os.PathLike


def _head_and_size(source: Source) -> tuple[bytes, int]:
    if isinstance(source, bytes):
        return source[:16], len(source)
    with open(source, "rb") as f:
        return f.read(16), os.fstat(f.fileno()).st_size


def sniff(source: Source, uri: str) -> str:
    """The format of a model file (its bytes or local path), or a CheckpointError saying why it is none of them."""
    data, size = _head_and_size(source)
    if not data:
        raise CheckpointError(f"{uri}: the file is empty (0 bytes); expected {EXPECTED}. Copy or download it again.")
    if data.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(io.BytesIO(source) if isinstance(source, bytes) else source):
            raise CheckpointError(f"{uri}: the file is truncated or damaged ({size} bytes, its zip archive has "
                                  f"no end record); copy or download it again.")
        return TORCH_ZIP
    if data[:1] == b"\x80" and data[2:14] == _LEGACY_MAGIC:
        return TORCH_LEGACY
    if data[:1] == b"\x80" and len(data) > 1 and 2 <= data[1] <= 5:
        return PICKLE
    raise CheckpointError(f"{uri}: not a model file (it starts with {data[:8]!r}); expected {EXPECTED}.")


def _blocked_global(message: str) -> str | None:
    found = re.search(r"GLOBAL ([\w.]+)", message)
    return found.group(1) if found else None


def _read_torch(source: Source, uri: str, safe_globals: Iterable[Any], kind: str) -> Any:
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu",
                              weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError/EOFError/KeyError for bad files
        message = str(exc)
        blocked = _blocked_global(message)
        if blocked:
            raise CheckpointError(refused_message(uri, blocked)) from None
        first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        # The legacy stream has no index: a short read anywhere in it means the file was cut or damaged.
        if kind == TORCH_LEGACY or isinstance(exc, EOFError) or "EOF" in message or "truncated" in message:
            raise CheckpointError(f"{uri}: the file is truncated or damaged ({_head_and_size(source)[1]} bytes; "
                                  f"{first_line[:120]}); copy or download it again.") from None
        raise CheckpointError(f"{uri}: not a readable PyTorch checkpoint ({first_line[:200]}); expected "
                              f"{EXPECTED}.") from None


def read_weights(source: Source, uri: str, safe_globals: Iterable[Any] = ()) -> tuple[str, Any]:
    """(format, content) of a model file (bytes or local path); `uri` names it in errors. Pickles come back as
    nvidia_pkl records, never as live objects."""
    kind = sniff(source, uri)
    if kind == PICKLE:
        from fstrain.models.nvidia_pkl import read_network_pickle
        return kind, read_network_pickle(source if isinstance(source, bytes) else Path(source).read_bytes(), uri)
    return kind, _read_torch(source, uri, safe_globals, kind)
