"""Endless, deterministic, resumable streams of training samples from WebDataset shards on storage.

Why not a DataLoader: resuming must reproduce the uninterrupted run exactly, so the order of samples is a pure
function of (seed, epoch) and the stream's position is one number per epoch. On resume the epoch is replayed
and the first `offset` samples are dropped undecoded. Style datasets are small (hundreds of images), so each
process reads every shard and keeps every `world_size`-th sample.

A sample whose bytes do not decode is skipped and counted (`skipped`); an epoch with no readable sample at
all is an error that names the prefix.
"""
from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np
import torch

from fstrain.data import shards, storage
from fstrain.data.images import ImageDecodeError, decode_pixels

T = TypeVar("T")


class DatasetError(RuntimeError):
    """A training dataset is missing, empty or unusable; the message names the URI and what to do."""


class CorruptSampleError(ValueError):
    """One sample's bytes could not be decoded (it is skipped and counted, not fatal)."""


@dataclass
class StreamPosition:
    epoch: int = 0
    offset: int = 0      # samples of this epoch already taken by this process (decodable or not)
    skipped: int = 0     # corrupt samples skipped since the run began


class ShardStream(Generic[T]):
    """Decoded samples from every `shard-*.tar` under `prefix_uri`, epoch after epoch, in a seeded order."""

    def __init__(self, prefix_uri: str, decode: Callable[[dict[str, Any]], T], *, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 64, what: str = "dataset", how_to_fix: str = ""):
        self.prefix_uri = prefix_uri
        self.decode = decode
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.what = what
        self.how_to_fix = how_to_fix
        self.position = StreamPosition()
        self.shard_uris = self._list_shards()
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._decoded_this_epoch = 0
        self._whole_epoch_seen = True
        self._reader: shards.ShardReader | None = None
        self._tar_errors_seen = 0

    def _list_shards(self) -> list[str]:
        try:
            found = shards.list_shards(self.prefix_uri)
        except storage.StorageError as exc:
            raise DatasetError(f"{self.what}: cannot list shards under {self.prefix_uri} ({exc}). "
                               f"{self.how_to_fix}") from exc
        if not found:
            raise DatasetError(f"{self.what}: no shard-*.tar under {self.prefix_uri}. {self.how_to_fix}")
        return list(found)

    # -- position (saved in checkpoints)
    def state_dict(self) -> dict[str, int]:
        return asdict(self.position)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = StreamPosition(**{k: int(v) for k, v in state.items()})
        self._iterator = None

    # -- ordering
    def _epoch_samples(self, epoch: int) -> Iterator[dict[str, Any]]:
        """Raw samples of one epoch for this process: shards in a seeded order, a seeded shuffle buffer.

        Unreadable tar data is skipped by the shared reader; its count (`reader.stats.corrupt`) feeds `skipped`.
        """
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(self.shard_uris)
        rng.shuffle(order)
        self._reader = shards.read_samples(order)
        return self._shuffled(self._reader, rng)

    def _shuffled(self, reader: Iterable[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        buffer: list[dict[str, Any]] = []
        try:
            for index, sample in enumerate(reader):
                if index % self.world_size != self.rank:
                    continue
                buffer.append(sample)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
        except storage.StorageError as exc:
            raise DatasetError(f"{self.what}: cannot read shards under {self.prefix_uri} ({exc}). "
                               f"{self.how_to_fix}") from exc
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def _start_epoch(self) -> None:
        """(Re)open the current epoch and drop the samples already consumed, without decoding them."""
        self._iterator = self._epoch_samples(self.position.epoch)
        self._decoded_this_epoch = 0
        self._whole_epoch_seen = self.position.offset == 0
        for _ in range(self.position.offset):
            if next(self._iterator, None) is None:
                break
        # Tar errors met while replaying were counted before the checkpoint; count only new ones from here.
        self._tar_errors_seen = self._reader.stats.corrupt

    def _count_tar_errors(self) -> None:
        new = self._reader.stats.corrupt - self._tar_errors_seen
        self.position.skipped += new
        self._tar_errors_seen += new

    def next(self) -> T:
        """The next decodable sample; corrupt ones are skipped and counted."""
        if self._iterator is None:
            self._start_epoch()
        while True:
            sample = next(self._iterator, None)
            self._count_tar_errors()
            if sample is None:
                if self._whole_epoch_seen and self._decoded_this_epoch == 0:
                    raise DatasetError(
                        f"{self.what}: no readable sample under {self.prefix_uri} for process {self.rank} of "
                        f"{self.world_size} ({self.position.skipped} corrupt samples skipped). {self.how_to_fix}")
                self.position.epoch += 1
                self.position.offset = 0
                self._start_epoch()
                continue
            self.position.offset += 1
            try:
                value = self.decode(sample)
            except CorruptSampleError:
                self.position.skipped += 1
                continue
            self._decoded_this_epoch += 1
            return value

    def next_batch(self, batch_size: int) -> list[T]:
        return [self.next() for _ in range(batch_size)]


# ---------------------------------------------------------------- decoders


def _sample_name(sample: dict[str, Any]) -> str:
    return str(sample.get("__key__", "?"))


def decode_image(data: bytes, size: int, *, name: str = "?") -> torch.Tensor:
    """Image bytes -> (3, size, size) float tensor in [-1, 1], through the one decoder (fstrain.data.images:
    EXIF orientation, odd modes, centred square resized with Lanczos when needed)."""
    try:
        array = decode_pixels(data, f"sample {name}", size)
    except ImageDecodeError as exc:
        raise CorruptSampleError(str(exc)) from exc
    return torch.from_numpy(array).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _field(sample: dict[str, Any], names: tuple[str, ...]) -> bytes:
    for name in names:
        if name in sample:
            return sample[name]
    raise CorruptSampleError(f"sample {_sample_name(sample)}: none of the keys {names} present "
                             f"(has {sorted(k for k in sample if not k.startswith('__'))})")


STYLE_IMAGE_KEYS = ("png", "jpg", "jpeg")
PAIR_STYLE_KEYS = ("s.png", "S.png")
PAIR_WPLUS_KEYS = ("w_plus.npy",)


def style_image_decoder(size: int) -> Callable[[dict[str, Any]], torch.Tensor]:
    def decode(sample: dict[str, Any]) -> torch.Tensor:
        return decode_image(_field(sample, STYLE_IMAGE_KEYS), size, name=_sample_name(sample))
    return decode


def pair_decoder(size: int, n_latent: int, style_dim: int) -> Callable[[dict[str, Any]], tuple]:
    """Pseudo-pair sample -> (style image S (3, size, size), w_plus (n_latent, style_dim))."""
    def decode(sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        name = _sample_name(sample)
        image = decode_image(_field(sample, PAIR_STYLE_KEYS), size, name=name)
        try:
            w_plus = np.load(io.BytesIO(_field(sample, PAIR_WPLUS_KEYS)), allow_pickle=False)
        except CorruptSampleError:
            raise
        except Exception as exc:
            raise CorruptSampleError(f"sample {name}: w_plus.npy does not load ({exc})") from exc
        w_plus = np.asarray(w_plus, dtype=np.float32)
        if w_plus.ndim == 3 and w_plus.shape[0] == 1:   # stored with a batch axis
            w_plus = w_plus[0]
        if w_plus.shape != (n_latent, style_dim):
            # Not corruption: the pairs were made for a different generator. Fail loudly.
            raise DatasetError(f"pair sample {name}: w_plus has shape {tuple(w_plus.shape)}, the generator "
                               f"needs ({n_latent}, {style_dim}); rebuild the pairs with this base model")
        return image, torch.from_numpy(w_plus.copy())
    return decode
