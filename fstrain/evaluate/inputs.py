"""Image sources of the evaluation, as batches of (N, 3, size, size) tensors in [-1, 1].

- the style dataset `<root>/datasets/<style>/` (WebDataset shards from fstrain.ingest): FID's reference set;
- aligned photos for the perceptual distance: `evaluate.photos` names a folder / S3 prefix of images or of
  shards, or "synthetic" for portraits of fstrain.data.synthetic's photo domain (already FFHQ-aligned).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from fstrain import layout
from fstrain.data import storage
from fstrain.data.images import IMAGE_SUFFIXES, decode_image
from fstrain.data.shards import list_shards, read_samples
from fstrain.stylize.images import from_uint8

SAMPLE_IMAGE_KEYS = ("png", "jpg", "jpeg")
SYNTHETIC = "synthetic"


@dataclass
class ImageSet:
    """Where images came from and how many were usable (undecodable ones are counted, never hidden)."""
    description: str
    used: int = 0
    skipped: list[str] = field(default_factory=list)


def _decode(data: bytes, size: int, name: str) -> np.ndarray:
    image = decode_image(data, name)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def _batched(arrays: Iterator[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    batch: list[np.ndarray] = []
    for array in arrays:
        batch.append(array)
        if len(batch) == batch_size:
            yield from_uint8(np.stack(batch))
            batch = []
    if batch:
        yield from_uint8(np.stack(batch))


def _shard_images(prefix: str, size: int, limit: int, info: ImageSet) -> Iterator[np.ndarray]:
    for sample in read_samples(prefix):
        if limit and info.used >= limit:
            return
        name = str(sample.get("__key__", "?"))
        data = next((sample[k] for k in SAMPLE_IMAGE_KEYS if k in sample), None)
        try:
            if data is None:
                raise ValueError(f"no image entry ({', '.join(SAMPLE_IMAGE_KEYS)})")
            pixels = _decode(data, size, name)
        except Exception as exc:   # PIL raises many types for bad bytes
            info.skipped.append(f"{name}: {exc}")
            continue
        info.used += 1
        yield pixels


def _file_images(uris: list[str], size: int, limit: int, info: ImageSet) -> Iterator[np.ndarray]:
    for uri in uris:
        if limit and info.used >= limit:
            return
        try:
            pixels = _decode(storage.read_bytes(uri), size, uri)
        except Exception as exc:
            info.skipped.append(f"{uri}: {exc}")
            continue
        info.used += 1
        yield pixels


def style_images(root: str, style: str, size: int, batch_size: int, limit: int = 0) -> tuple[Iterator[torch.Tensor],
                                                                                           ImageSet]:
    """Batches of the style dataset's images (all of them, or the first `limit`), resized to `size`."""
    prefix = layout.dataset(root, style)
    if not list_shards(prefix):
        raise FileNotFoundError(f"{prefix}: no style dataset shards (shard-*.tar); ingest the '{style}' images "
                                f"with fstrain.ingest first")
    info = ImageSet(f"style images from {prefix}")
    return _batched(_shard_images(prefix, size, limit, info), batch_size), info


def synthetic_photos(count: int, size: int, seed: int) -> Iterator[np.ndarray]:
    from fstrain.data.synthetic import generate
    for _, image, _ in generate("photo", count, size, seed=seed):
        yield np.asarray(image.convert("RGB"), dtype=np.uint8)


def photo_batches(source: str, size: int, count: int, batch_size: int, seed: int) -> tuple[Iterator[torch.Tensor],
                                                                                          ImageSet]:
    """Batches of aligned photos from `evaluate.photos` (see module docstring), at most `count` of them."""
    if source == SYNTHETIC:
        info = ImageSet(f"synthetic aligned portraits (fstrain.data.synthetic 'photo', seed {seed})", used=count)
        return _batched(synthetic_photos(count, size, seed), batch_size), info
    if list_shards(source):
        info = ImageSet(f"aligned photos from shards under {source}")
        return _batched(_shard_images(source, size, count, info), batch_size), info
    try:
        uris = storage.list_uris(source, suffixes=IMAGE_SUFFIXES)
    except storage.NotFoundError:
        uris = []
    if not uris:
        raise FileNotFoundError(f"evaluate.photos = {source}: no images ({', '.join(IMAGE_SUFFIXES)}) or shards "
                                f"found; point it at a folder/prefix of aligned face photos, or use 'synthetic'")
    info = ImageSet(f"aligned photos from {source}")
    return _batched(_file_images(uris, size, count, info), batch_size), info
