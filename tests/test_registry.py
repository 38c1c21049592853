"""Model registry: local and s3:// URIs, sha256 pins, per-machine cache, weights_only loading."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from fstrain.data import storage
from fstrain.models.registry import (ChecksumError, MissingWeightsError, ModelSpec, WeightsMismatchError, fetch,
                                     load_torch, save_torch)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class NotATensor:
    """A custom class: weights_only loading must refuse to unpickle it."""


def test_local_paths_are_returned_as_is_and_verified(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    assert fetch(str(path)) == path
    assert fetch(str(path), _sha(b"weights")) == path
    assert ModelSpec(str(path), _sha(b"weights")).fetch() == path
    with pytest.raises(ChecksumError, match=str(path)):
        fetch(str(path), _sha(b"other"))
    with pytest.raises(MissingWeightsError, match="nothere.pt"):
        fetch(str(tmp_path / "nothere.pt"))


def test_load_torch_is_weights_only(tmp_path):
    uri = save_torch({"w": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_torch(uri)["w"], torch.arange(3))
    torch.save({"obj": NotATensor()}, tmp_path / "pickle.pt")
    with pytest.raises(WeightsMismatchError, match="pickle.pt"):
        load_torch(str(tmp_path / "pickle.pt"))


def test_s3_fetch_caches_by_sha_and_verifies(s3_root, tmp_path):
    uri = storage.join(s3_root, "models", "enc.pt")
    storage.write_bytes(uri, b"encoder-v1")
    cache = tmp_path / "cache"
    local = fetch(uri, _sha(b"encoder-v1"), cache_dir=cache)
    assert local.read_bytes() == b"encoder-v1" and local.parent == cache and local.suffix == ".pt"
    # Pinned and cached: served from the cache even after the object is gone.
    storage.delete(uri)
    assert fetch(uri, _sha(b"encoder-v1"), cache_dir=cache) == local
    # A damaged cache entry is detected and refetched (here the object is gone, so that is an error).
    local.write_bytes(b"corrupt")
    with pytest.raises(MissingWeightsError, match="enc.pt"):
        fetch(uri, _sha(b"encoder-v1"), cache_dir=cache)


def test_s3_unpinned_cache_follows_overwrites(s3_root, tmp_path):
    uri = storage.join(s3_root, "g.pt")
    storage.write_bytes(uri, b"generator-v1")
    first = fetch(uri, cache_dir=tmp_path)
    assert fetch(uri, cache_dir=tmp_path) == first
    storage.write_bytes(uri, b"generator-v2")
    second = fetch(uri, cache_dir=tmp_path)
    assert second != first and second.read_bytes() == b"generator-v2"


def test_s3_checksum_mismatch_leaves_nothing_in_cache(s3_root, tmp_path):
    uri = storage.join(s3_root, "id.pth")
    storage.write_bytes(uri, b"identity")
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(uri, _sha(b"something else"), cache_dir=tmp_path)
    assert list(Path(tmp_path).iterdir()) == []  # no partial download and no lock file left behind
    with pytest.raises(MissingWeightsError, match="missing.pth"):
        fetch(storage.join(s3_root, "missing.pth"), cache_dir=tmp_path)


def test_save_and_load_torch_through_s3(s3_root, tmp_path):
    uri = storage.join(s3_root, "sub", "state.pt")
    save_torch({"a": torch.ones(2, 2)}, uri)
    assert storage.exists(uri)
    assert torch.equal(load_torch(uri, cache_dir=tmp_path)["a"], torch.ones(2, 2))
