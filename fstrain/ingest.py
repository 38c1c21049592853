"""Turn a folder or prefix of style images into training shards.

    python -m fstrain.ingest SRC DEST --style NAME --size N [--samples-per-shard K]

SRC is a local directory or an s3:// prefix; every file under it is an input. Each readable image is decoded
(odd modes converted, see fstrain.data.images), centre-cropped to a square, resized to N x N and stored as PNG in
`DEST/datasets/NAME/shard-NNNNNN.tar` with a JSON sidecar (source, original size and mode, conversions). A file
`foo.json` next to `foo.png` is that image's metadata (kept under "source_meta"), not an input.
Every input ends as a sample or as a skip with its name and reason; the run ends with a summary, also written to
`DEST/datasets/NAME/ingest_report.json`, and exits non-zero when nothing was ingested.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import os
import re
import sys
from typing import Annotated, Iterator

from tqdm import tqdm

from fstrain import layout
from fstrain.data import storage
from fstrain.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, center_crop_resize, decode_image_info, encode_png
from fstrain.data.shards import ShardWriter

_STYLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
READ_THREADS = 8  # reads are network-bound on S3; decoding stays on the main thread


@dataclasses.dataclass
class IngestReport:
    style: str
    dataset_uri: str
    ok: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (source name, reason)
    shards: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [f"ingest {self.style}: {self.ok} ok, {len(self.skipped)} skipped -> {self.dataset_uri} "
                 f"({len(self.shards)} shard(s))"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"style": self.style, "dataset": self.dataset_uri, "ok": self.ok, "shards": self.shards,
                "skipped": [{"name": n, "reason": r} for n, r in self.skipped]}


def list_inputs(src: str) -> list[str]:
    """Every file under SRC (or SRC itself when it is a local file)."""
    if not storage.is_s3(src) and os.path.isfile(src):
        return [src]
    uris = storage.list_uris(src)
    if not uris and not storage.is_s3(src) and not os.path.isdir(src):
        raise storage.NotFoundError(src, "source folder does not exist")
    return uris


def _relative(src: str, uri: str) -> str:
    prefix = src.rstrip("/") + "/"
    return uri[len(prefix):] if uri.startswith(prefix) else storage.basename(uri)


def _sample_key(rel: str, taken: set[str]) -> str:
    """A readable, unique, webdataset-safe key from a relative path (no dots: webdataset splits there)."""
    stem = rel.rsplit(".", 1)[0] if "." in storage.basename(rel) else rel
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", stem.replace("/", "__")).strip("_") or "image"
    if key in taken:
        key = f"{key}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
    taken.add(key)
    return key


def _split_inputs(src: str, uris: list[str]) -> tuple[list[str], dict[str, str], list[tuple[str, str]]]:
    """(image candidates, stem -> metadata json URI, skipped hidden files)."""
    by_stem: dict[str, list[str]] = {}
    for uri in uris:
        rel = _relative(src, uri)
        by_stem.setdefault(rel.rsplit(".", 1)[0], []).append(uri)
    candidates, metadata, skipped = [], {}, []
    for uri in uris:
        rel = _relative(src, uri)
        if storage.basename(rel).startswith("."):
            skipped.append((rel, "hidden file"))
            continue
        stem = rel.rsplit(".", 1)[0]
        siblings = by_stem[stem]
        if rel.lower().endswith(".json") and len(siblings) > 1:
            metadata[stem] = uri            # foo.json beside foo.png: that image's metadata
            continue
        candidates.append(uri)
    return candidates, metadata, skipped


def _read_all(uris: list[str]) -> Iterator[tuple[str, bytes | Exception]]:
    """(uri, bytes or the StorageError) in order, read a few at a time in threads."""
    def read(uri: str) -> bytes | Exception:
        try:
            return storage.read_bytes(uri)
        except storage.StorageError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        # map() keeps order; chunks bound how many files sit in memory at once.
        for start in range(0, len(uris), 4 * READ_THREADS):
            chunk = uris[start:start + 4 * READ_THREADS]
            yield from zip(chunk, pool.map(read, chunk))


def ingest(src: str, dest: str, style: str, size: int, samples_per_shard: int = 1000,
           max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = True) -> IngestReport:
    """Ingest every file under `src` into `dest/datasets/<style>/`; see the module doc."""
    if not _STYLE_RE.match(style):
        raise ValueError(f"style name {style!r}: use letters, digits, '_' and '-' only")
    if size < 1:
        raise ValueError(f"--size must be positive, got {size}")
    src = str(src).rstrip("/") or "/"
    report = IngestReport(style=style, dataset_uri=layout.dataset(dest, style))
    uris = list_inputs(src)
    candidates, metadata, report.skipped = _split_inputs(src, uris)
    keys: set[str] = set()
    with ShardWriter(report.dataset_uri, max_samples=samples_per_shard, replace_existing=True) as writer:
        items = _read_all(candidates)
        for uri, data in tqdm(items, total=len(candidates), desc=f"ingest {style}", disable=not progress,
                              file=sys.stderr):
            rel = _relative(src, uri)
            if isinstance(data, Exception):
                report.skipped.append((rel, f"cannot read: {data}"))
                continue
            try:
                decoded = decode_image_info(data, rel, max_pixels=max_pixels)
            except ImageDecodeError as exc:
                report.skipped.append((rel, exc.reason))
                continue
            image = decoded.image
            conversions = list(decoded.conversions)
            if min(image.size) < size:
                conversions.append(f"upscaled from {min(image.size)}px")
            sidecar = {
                "source": uri,
                "source_key": rel,
                "style": style,
                "size": size,
                "original_size": list(decoded.original_size),
                "original_mode": decoded.original_mode,
                "format": decoded.format,
                "conversions": conversions,
                "crop": "center",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            stem = rel.rsplit(".", 1)[0]
            if stem in metadata:
                try:
                    sidecar["source_meta"] = storage.read_json(metadata[stem])
                except storage.StorageError as exc:
                    conversions.append(f"metadata {storage.basename(metadata[stem])} unreadable: {exc}")
            writer.write({"__key__": _sample_key(rel, keys), "png": encode_png(center_crop_resize(image, size)),
                          "json": sidecar})
            report.ok += 1
        # A run that ingested nothing keeps the previous dataset instead of deleting it.
        writer.replace_existing = report.ok > 0
    report.shards = writer.shards
    storage.write_json(layout.ingest_report(dest, style), report.to_json())
    return report


def main(argv: list[str] | None = None) -> int:
    from annotated_types import Ge

    from fstrain import preflight
    from fstrain.cli import UsageError, add_debug_flag
    from fstrain.config import check_value
    from fstrain.settings import AtLeast1

    parser = argparse.ArgumentParser(prog="python -m fstrain.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="folder or s3:// prefix of style images")
    parser.add_argument("dest", help="storage root (folder or s3:// prefix); shards go to DEST/datasets/STYLE/")
    parser.add_argument("--style", required=True, help="style name, e.g. cartoon")
    parser.add_argument("--size", type=int, required=True, help="output resolution (square), e.g. 1024")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images larger than this many pixels (decompression bombs)")
    parser.add_argument("--no-progress", action="store_true")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    # Flags, the source and the destination are checked before the first image is read.
    if not _STYLE_RE.match(args.style):
        raise UsageError(f"--style {args.style!r}: use letters, digits, '_' and '-' only")
    check_value(args.size, Annotated[int, Ge(4)], "--size")
    check_value(args.samples_per_shard, AtLeast1, "--samples-per-shard")
    check_value(args.max_pixels, AtLeast1, "--max-pixels")
    preflight.input_exists(args.src, "SRC")
    preflight.storage_usable(args.dest, "DEST", write=True)
    report = ingest(args.src, args.dest, args.style, args.size, args.samples_per_shard, args.max_pixels,
                    progress=not args.no_progress)
    print(report.summary())
    if report.ok == 0:
        print(f"ingest failed: no image under {args.src} could be ingested", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from fstrain.cli import run_command

    sys.exit(run_command(main))
