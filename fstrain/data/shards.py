"""WebDataset shards on any storage root: a writer that uploads each finished shard, and a splitting reader.

A sample is a dict: `"__key__"` plus one entry per file extension, e.g. `{"__key__": "img-0001", "png": b"...",
"json": {...}, "w_plus.npy": ndarray}`; it is stored as `img-0001.png`, `img-0001.json`, `img-0001.w_plus.npy` in a
tar. Reading gives raw bytes per extension (case preserved); `decode_sample` turns json/npy entries into objects.

Splitting across readers (ranks x DataLoader workers): shards are dealt to ranks first, then to workers. When there
are fewer shards than readers, every reader streams all shards and keeps every k-th sample instead, so no reader is
left without data (which would hang a distributed job) and every sample is still read exactly once overall.

`s3://` shards are streamed through boto3: importing this module registers an `s3` scheme with webdataset's gopen.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import random
import re
import shutil
import tarfile
import tempfile
import threading
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch.utils.data
import webdataset.tariterators as wds_tar
from webdataset.gopen import gopen_schemes  # (webdataset.gopen the attribute is a function)

from fstrain.data import storage

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
_SHARD_RE = re.compile(r"shard-(\d+)\.tar$")
# Files in our tars get a fixed timestamp so identical samples give byte-identical shards (reproducible reruns).
_TAR_MTIME = 0


# ------------------------------------------------------------------------------------------ webdataset scheme
def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """webdataset gopen handler for s3:// URLs: the boto3 streaming body (no `aws` subprocess)."""
    if mode[0] != "r":
        raise ValueError(f"{url}: writing through gopen is not supported; use fstrain.data.shards.ShardWriter")
    return storage.open_read(url)


gopen_schemes["s3"] = gopen_s3


# ------------------------------------------------------------------------------------------------------ writer
def _encode(ext: str, value: Any, key: str) -> bytes:
    """Bytes for one sample entry, by extension and value type."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    last = ext.rsplit(".", 1)[-1].lower()
    if last == "json":
        return json.dumps(value, sort_keys=True).encode("utf-8")
    if last == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, str):
        return value.encode("utf-8")
    if hasattr(value, "save") and last in ("png", "jpg", "jpeg", "webp"):  # a PIL image
        buf = io.BytesIO()
        value.save(buf, format="JPEG" if last == "jpg" else last.upper())
        return buf.getvalue()
    raise TypeError(f"sample {key!r}: cannot encode {type(value).__name__} as .{ext}; give bytes, str, "
                    "a dict for .json or an ndarray for .npy")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample __key__ must be a non-empty string, got {key!r}")
    last = key.rsplit("/", 1)[-1]
    # webdataset splits a member name at the first dot of its basename: a dot in the key would split the sample.
    if "." in last or not last or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"sample __key__ {key!r}: no dots, empty parts or absolute paths allowed "
                         "(webdataset splits file names at the first dot)")
    return key


class ShardWriter:
    """Write samples into `prefix_uri/shard-NNNNNN.tar`, uploading each shard as soon as it is full.

    Use as a context manager. A shard is built in a local temp file and uploaded atomically, so readers never
    see a partial shard. If the `with` block raises, the unfinished shard is discarded (finished ones stay).
    `replace_existing=True` deletes, on successful close, shards under the prefix that this writer did not write
    (stale shards from an earlier, larger run).
    """

    def __init__(self, prefix_uri: str, max_samples: int = 1000, max_bytes: int = 1 << 30, start_index: int = 0,
                 replace_existing: bool = False):
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.prefix_uri = str(prefix_uri)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.next_index = start_index
        self.replace_existing = replace_existing
        self.shards: list[str] = []     # URIs of uploaded shards, in order
        self.count = 0                  # samples written in total
        self._tmpdir: str | None = None
        self._tar: tarfile.TarFile | None = None
        self._tar_path = ""
        self._in_shard = 0
        self._bytes = 0
        self._keys: set[str] = set()

    def __enter__(self) -> "ShardWriter":
        self._tmpdir = tempfile.mkdtemp(prefix="fstrain-shards-")
        return self

    def __exit__(self, etype, exc, tb) -> bool:
        try:
            if exc is None:
                self.close()
            else:
                self._discard()
        finally:
            if self._tmpdir:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None
        return False

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample; uploads the current shard first if it is full."""
        if self._tmpdir is None:
            raise RuntimeError("ShardWriter.write outside its `with` block")
        key = _check_key(sample.get("__key__"))
        if key in self._keys:
            raise ValueError(f"duplicate sample __key__ {key!r} in {self.prefix_uri}")
        entries = [(ext, _encode(ext, value, key)) for ext, value in sample.items() if not ext.startswith("__")]
        if not entries:
            raise ValueError(f"sample {key!r} has no data entries besides __key__")
        if self._tar is not None and (self._in_shard >= self.max_samples or self._bytes >= self.max_bytes):
            self._finish_shard()
        if self._tar is None:
            self._tar_path = os.path.join(self._tmpdir, SHARD_PATTERN % self.next_index)
            self._tar = tarfile.open(self._tar_path, "w", format=tarfile.PAX_FORMAT)
        for ext, data in entries:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data)
        self._keys.add(key)
        self._in_shard += 1
        self.count += 1

    def close(self) -> list[str]:
        """Upload the last shard (if any) and return every shard URI written."""
        if self._tar is not None:
            self._finish_shard()
        if self.replace_existing:
            ours = set(self.shards)
            for uri in list_shards(self.prefix_uri):
                if uri not in ours:
                    log.info("removing stale shard %s", uri)
                    storage.delete(uri)
        return list(self.shards)

    def _finish_shard(self) -> None:
        assert self._tar is not None
        self._tar.close()
        uri = storage.join(self.prefix_uri, SHARD_PATTERN % self.next_index)
        storage.upload_file(self._tar_path, uri)
        os.remove(self._tar_path)
        self.shards.append(uri)
        self.next_index += 1
        self._tar, self._in_shard, self._bytes = None, 0, 0

    def _discard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def list_shards(prefix_uri: str) -> list[str]:
    """Shard URIs (`shard-NNNNNN.tar`) directly under a prefix, in index order."""
    prefix_uri = str(prefix_uri).rstrip("/")
    found = [u for u in storage.list_uris(prefix_uri, suffixes=".tar")
             if _SHARD_RE.fullmatch(storage.basename(u)) and storage.dirname(u).rstrip("/") == prefix_uri]
    return sorted(found, key=lambda u: int(_SHARD_RE.fullmatch(storage.basename(u)).group(1)))


# ------------------------------------------------------------------------------------------------------ reader
@dataclasses.dataclass
class ReadStats:
    """What one reader saw. Corrupt = unreadable tar data or samples missing a required entry."""

    samples: int = 0
    corrupt: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)

    def record(self, message: str) -> None:
        self.corrupt += 1
        if len(self.errors) < 100:
            self.errors.append(message)
        log.warning("skipping corrupt shard data: %s", message)


def plan_split(num_shards: int, rank: int, world_size: int, worker: int, num_workers: int) -> tuple[str, Any]:
    """How reader (rank, worker) splits the data: ("shards", indices) or ("samples", (offset, stride)).

    Shards are dealt to ranks first (rank r gets shards r, r+W, ...), then to that rank's workers. With fewer
    shards than readers this would leave someone empty, so every reader takes every (W*N)-th sample instead.
    """
    if not (0 <= rank < world_size) or not (0 <= worker < num_workers):
        raise ValueError(f"bad split rank={rank}/{world_size} worker={worker}/{num_workers}")
    readers = world_size * num_workers
    if num_shards >= readers:
        rank_shards = list(range(num_shards))[rank::world_size]
        return "shards", rank_shards[worker::num_workers]
    return "samples", (rank * num_workers + worker, readers)


class ShardReader:
    """Iterable over the samples one reader is responsible for (see module doc). `.stats` counts what it saw.

    repeat=True cycles forever (training by step count); a reader that finds no sample in a full pass then raises
    instead of spinning. `required` names entries a sample must have (others count as corrupt and are skipped).
    """

    def __init__(self, source: str | Sequence[str], rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, required: Iterable[str] = (), shuffle_shards: bool = False,
                 shuffle_buffer: int = 0, seed: int = 0, repeat: bool = False):
        self.urls = resolve_shards(source)
        self.rank, self.world_size, self.worker, self.num_workers = rank, world_size, worker, num_workers
        self.mode, self.plan = plan_split(len(self.urls), rank, world_size, worker, num_workers)
        self.required = tuple(required)
        self.shuffle_shards, self.shuffle_buffer, self.seed, self.repeat = shuffle_shards, shuffle_buffer, seed, repeat
        self.stats = ReadStats()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = 0
        while True:
            before = self.stats.samples
            yield from self._shuffled(self._one_pass(epoch), epoch)
            if not self.repeat:
                return
            if self.stats.samples == before:
                raise RuntimeError(
                    f"reader rank {self.rank}/{self.world_size} worker {self.worker}/{self.num_workers} got no "
                    f"samples from {len(self.urls)} shard(s) starting {self.urls[0]}: too few samples for this many "
                    "readers, or all corrupt")
            epoch += 1

    def _one_pass(self, epoch: int) -> Iterator[dict[str, Any]]:
        if self.mode == "shards":
            urls = [self.urls[i] for i in self.plan]
            offset, stride = 0, 1
        else:
            urls = list(self.urls)      # every reader streams everything, in the same order
            offset, stride = self.plan
        if self.shuffle_shards:
            # Same permutation on every reader of an epoch, so sample-level striding stays disjoint.
            random.Random(self.seed * 1_000_003 + epoch).shuffle(urls)
        index = -1
        for sample in _samples_from_tars(urls, self.stats):
            index += 1
            if index % stride != offset:
                continue
            missing = [k for k in self.required if k not in sample]
            if missing:
                self.stats.record(f"{sample['__url__']}: sample {sample['__key__']!r} lacks {missing}")
                continue
            self.stats.samples += 1
            yield sample

    def _shuffled(self, samples: Iterator[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = random.Random(f"{self.seed}/{self.rank}/{self.worker}/{epoch}")  # str seeds are stable across runs
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


def _samples_from_tars(urls: Sequence[str], stats: ReadStats) -> Iterator[dict[str, Any]]:
    """webdataset's tar expansion and grouping, keeping entry names' case and counting tar errors."""
    lock = threading.Lock()

    def handler(exn: Exception) -> bool:
        if isinstance(exn, storage.StorageError):
            raise exn       # a missing bucket or denied access is a set-up problem, not corrupt data
        with lock:
            stats.record(" ".join(str(a) for a in exn.args if a is not None) or repr(exn))
        return True         # skip and go on

    streams = wds_tar.url_opener(({"url": u} for u in urls), handler=handler)
    files = wds_tar.tar_file_expander(streams, handler=handler)
    for sample in wds_tar.group_by_keys(files, lcase=False, handler=handler):
        yield sample


def resolve_shards(source: str | Sequence[str]) -> list[str]:
    """A prefix (every shard under it) or an explicit list of shard URIs; raises when there is nothing to read."""
    if isinstance(source, (str, os.PathLike)):
        source = str(source)
        urls = [source] if source.endswith(".tar") else list_shards(source)
    else:
        urls = [str(u) for u in source]
    if not urls:
        raise storage.NotFoundError(str(source), "no shard-NNNNNN.tar files found; run ingest first or fix the URI")
    return urls


def read_samples(source: str | Sequence[str], rank: int = 0, world_size: int = 1, worker: int = 0,
                 num_workers: int = 1, **kwargs: Any) -> ShardReader:
    """Samples (dicts of raw bytes by entry name + "__key__", "__url__") for one reader; see ShardReader."""
    return ShardReader(source, rank=rank, world_size=world_size, worker=worker, num_workers=num_workers, **kwargs)


def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """json entries -> objects, npy entries -> arrays (no pickle); everything else unchanged."""
    out: dict[str, Any] = {}
    for name, value in sample.items():
        last = name.rsplit(".", 1)[-1].lower()
        if last == "json" and isinstance(value, bytes):
            out[name] = json.loads(value)
        elif last == "npy" and isinstance(value, bytes):
            out[name] = np.load(io.BytesIO(value), allow_pickle=False)
        else:
            out[name] = value
    return out


def _default_rank() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(torch.utils.data.IterableDataset):
    """IterableDataset over shards for DataLoader(num_workers=N): each worker picks its own share.

    rank/world_size default to torch.distributed (or RANK/WORLD_SIZE). `transform` is applied to each raw
    sample (e.g. decode_sample + image decoding). `last_stats` is the stats of the last in-process iteration
    (with worker processes, each worker logs its own skips).
    """

    def __init__(self, source: str | Sequence[str], rank: int | None = None, world_size: int | None = None,
                 transform=None, **reader_kwargs: Any):
        super().__init__()
        default_rank, default_world = _default_rank()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.urls = resolve_shards(source)
        self.transform = transform
        self.reader_kwargs = reader_kwargs
        self.last_stats: ReadStats | None = None

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = ShardReader(self.urls, rank=self.rank, world_size=self.world_size, worker=worker,
                             num_workers=num_workers, **self.reader_kwargs)
        self.last_stats = reader.stats
        for sample in reader:
            yield self.transform(sample) if self.transform else sample
