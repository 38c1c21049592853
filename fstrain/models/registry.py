"""Model registry: pretrained files named by URI (local path or s3://), optionally pinned by sha256.

`fetch(uri, sha256)` returns a local path: local files as they are, remote files downloaded once per machine into
`~/.cache/fstrain/models/` (override with `$FSTRAIN_MODEL_CACHE` or `cache_dir=`), under a file lock (processes
on one machine wait for the first download instead of repeating it), atomically and verified.
`load_torch(uri)` fetches and reads with `torch.load(weights_only=True)` through `fstrain.models.formats` (one-line
errors). `save_torch(obj, uri)` writes atomically. `fstrain.models.hub` puts these together per config key.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from fstrain.models.architecture import state_dict_mismatch
from fstrain.models.errors import (CheckpointError, ChecksumError, MissingWeightsError,  # noqa: F401 (re-exported)
                                   WeightsMismatchError)

CACHE_ENV = "FSTRAIN_MODEL_CACHE"
REMOTE_SCHEMES = ("s3://",)


@dataclass
class ModelSpec:
    """How configs name a model: a URI and an optional sha256 pin."""
    uri: str
    sha256: str | None = None

    def fetch(self, cache_dir: str | os.PathLike | None = None) -> Path:
        return fetch(self.uri, self.sha256, cache_dir)


def is_remote(uri: str) -> bool:
    return str(uri).startswith(REMOTE_SCHEMES)


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fstrain" / "models")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _storage():
    # Imported lazily: only remote URIs need it, and it pulls in boto3/pyarrow.
    from fstrain.data import storage
    return storage


def _check_sha(path: Path, uri: str, sha256: str | None) -> None:
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ChecksumError(f"{uri}: sha256 is {actual}, config pins {sha256}. The file changed or the pin is "
                            f"stale: fix the file or update the sha256 in the config.")


def _remote_version(uri: str) -> str:
    """The object's ETag: it changes whenever the object is overwritten, so an unpinned cache entry refetches."""
    storage = _storage()
    if not storage.exists(uri):
        raise MissingWeightsError(f"{uri}: no such object. Upload the weights there or fix the URI in the config.")
    bucket, key = storage.parse_s3(uri)
    return str(storage.s3_client().head_object(Bucket=bucket, Key=key)["ETag"])


def _suffix(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return Path(name).suffix if "." in name else ""


def _make_readable(path: str | os.PathLike) -> None:
    """mkstemp files are 0600; model files are shared, so give them the usual umask-based mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _machine_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (released by the kernel if the holder dies, so it never goes stale). The holder
    removes the file when done; a waiter that got the lock of a removed file takes the lock again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # closing drops the flock


def fetch(uri: str | os.PathLike, sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of the model file at `uri`, verified against `sha256` when given.

    Remote files are cached under `<sha256>` when pinned, else under hash(uri + ETag); a cached file is
    reused without a download (pinned entries are re-hashed first; a damaged one is fetched again).
    """
    uri = str(uri)
    if not is_remote(uri):
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"{uri}: weights file not found. Put the file there or point the config at "
                                      f"it (python -m fstrain.models.init writes random test models).")
        _check_sha(path, uri, sha256)
        return path

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # A pinned file is cached by content; an unpinned one by URI + object version, so an overwrite refetches.
    key = sha256.lower() if sha256 else hashlib.sha256(f"{uri}\n{_remote_version(uri)}".encode()).hexdigest()
    target = cache / f"{key}{_suffix(uri)}"
    with _machine_lock(cache / f".{key}.lock"):
        if target.is_file():
            if sha256 is None or sha256_file(target) == sha256.lower():
                return target
            target.unlink(missing_ok=True)  # a damaged cache entry: fetch it again
        _download(uri, target, sha256)
    return target


def _download(uri: str, target: Path, sha256: str | None) -> None:
    cache = target.parent
    fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=".partial-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        storage = _storage()
        try:
            storage.download_file(uri, str(tmp))
        except storage.NotFoundError as exc:
            raise MissingWeightsError(f"{uri}: no such object. Upload the weights there or fix the URI in the "
                                      f"config.") from exc
        _check_sha(tmp, uri, sha256)
        _make_readable(tmp)
        os.replace(tmp, target)  # atomic: a reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)


def load_torch(uri: str | os.PathLike, sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
               safe_globals: Iterable[Any] = ()) -> Any:
    """fetch + read with torch.load(weights_only=True, map_location='cpu'); one-line errors naming the URI."""
    from fstrain.models.formats import read_weights
    path = fetch(uri, sha256, cache_dir)
    return read_weights(path, str(uri), safe_globals)[1]


def write_bytes_atomic(data: bytes, uri: str | os.PathLike) -> str:
    """Write to a local path (temp + rename) or an s3:// URI (one PUT); readers never see half a file."""
    uri = str(uri)
    if is_remote(uri):
        _storage().write_bytes(uri, data)
        return uri
    path = Path(uri).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _make_readable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return uri


def save_torch(obj: Any, uri: str | os.PathLike) -> str:
    """torch.save to a local path or s3:// URI atomically. Returns the URI."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes_atomic(buffer.getvalue(), uri)


def save_json(data: Any, uri: str | os.PathLike) -> str:
    return write_bytes_atomic(json.dumps(data, indent=2, sort_keys=True).encode("utf-8"), uri)


def check_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], uri: str, what: str,
                     ignore_missing: Iterable[str] = ("num_batches_tracked",)) -> None:
    """Strict key/shape check with a message naming every offending key, then load_state_dict(strict=True).

    BatchNorm `num_batches_tracked` may be absent from files written by old PyTorch versions; torch fills it in.
    """
    expected = module.state_dict()
    problems = state_dict_mismatch(expected, state, ignore_missing)
    if problems:
        raise WeightsMismatchError(f"{uri}: {what} weights do not fit: {problems}")
    # Fill absent num_batches_tracked with the module's own (torch only does this for legacy-versioned dicts).
    full = dict(state)
    for k in expected:
        if k not in full:
            full[k] = expected[k]
    module.load_state_dict(full, strict=True)
