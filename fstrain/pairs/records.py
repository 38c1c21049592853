"""The pair-shard sample format: what a pseudo-pair looks like on storage, and back.

One WebDataset sample per style image:
  __key__      source key (the style dataset's sample key)
  s.png        the style image S (at the generator's resolution)
  p.png        the pseudo photo P = G(w+) by the base G with its stored noise buffers, rendered one sample at a
               time: G.synthesis(w_plus[None]) on the same device gives exactly these 8-bit pixels
  z_plus.npy   (n_latent, D) float32 -- levels 1 and 2 only
  w_plus.npy   (n_latent, D) float32
  json         {"level", "style", "source_key", "generators": {...sha256}, "l_sem_initial"/"l_sem_final" (level 2),
                "noise": "base_generator_buffers", "format_version"}
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from fstrain.stylize.images import decode_png, encode_png

FORMAT_VERSION = 1
NOISE_SOURCE = "base_generator_buffers"     # P rendered with G.synthesis(w_plus) and G's stored noise maps
REQUIRED_KEYS = ("s.png", "p.png", "w_plus.npy", "json")


@dataclass
class PairSample:
    key: str
    style_image: np.ndarray         # uint8 (H, W, 3)
    pseudo_photo: np.ndarray        # uint8 (H, W, 3)
    w_plus: np.ndarray              # float32 (n_latent, D)
    z_plus: np.ndarray | None       # float32 (n_latent, D), None for level 3
    meta: dict


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_pair(sample: PairSample) -> dict[str, bytes | str]:
    """PairSample -> {"__key__": key, "s.png": bytes, ...} with every value already serialised."""
    record: dict[str, bytes | str] = {
        "__key__": sample.key,
        "s.png": encode_png(sample.style_image),
        "p.png": encode_png(sample.pseudo_photo),
        "w_plus.npy": npy_bytes(sample.w_plus),
        "json": json.dumps({**sample.meta, "format_version": FORMAT_VERSION}, sort_keys=True).encode("utf-8"),
    }
    if sample.z_plus is not None:
        record["z_plus.npy"] = npy_bytes(sample.z_plus)
    return record


def decode_pair(record: dict, source: str = "pair shard") -> PairSample:
    """A sample dict of raw bytes (as `fstrain.data.shards.read_samples` yields) -> PairSample."""
    key = record.get("__key__", "?")
    missing = [name for name in REQUIRED_KEYS if name not in record]
    if missing:
        raise ValueError(f"{source}: sample {key!r} lacks {missing}; present: {sorted(record)}. "
                         f"Is this a pair shard written by fstrain.pairs?")
    meta = record["json"]
    meta = json.loads(meta.decode("utf-8") if isinstance(meta, (bytes, bytearray)) else meta) \
        if not isinstance(meta, dict) else meta
    return PairSample(
        key=key,
        style_image=decode_png(record["s.png"]),
        pseudo_photo=decode_png(record["p.png"]),
        w_plus=load_npy(record["w_plus.npy"]),
        z_plus=load_npy(record["z_plus.npy"]) if "z_plus.npy" in record else None,
        meta=meta,
    )
