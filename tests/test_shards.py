"""fstrain.data.shards: writer uploads, reader splitting over ranks x workers, s3 streaming, corrupt data."""
from __future__ import annotations

import collections
import io
import json

import numpy as np
import pytest
import torch.utils.data
import webdataset
from PIL import Image

from fstrain.data import shards, storage


def png_bytes(i: int, size: int = 16) -> bytes:
    img = Image.new("RGB", (size, size), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(prefix: str, n: int, per_shard: int) -> list[str]:
    with shards.ShardWriter(prefix, max_samples=per_shard) as writer:
        for i in range(n):
            writer.write({"__key__": f"img-{i:05d}", "png": png_bytes(i), "json": {"index": i}})
    assert writer.count == n
    return writer.shards


def read_all_readers(prefix: str, world_size: int, num_workers: int) -> dict[tuple[int, int], list[str]]:
    """Keys seen by every (rank, worker), each worker in its own DataLoader process."""
    seen: dict[tuple[int, int], list[str]] = {}
    for rank in range(world_size):
        dataset = shards.ShardDataset(prefix, rank=rank, world_size=world_size,
                                      transform=lambda s: (torch.utils.data.get_worker_info().id, s["__key__"],
                                                           json.loads(s["json"])["index"], s["png"]))
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
        for worker, key, index, png in loader:
            assert key == f"img-{index:05d}" and png == png_bytes(index)
            seen.setdefault((rank, worker), []).append(key)
    return seen


@pytest.mark.parametrize("per_shard", [40, 150], ids=["shard-split", "sample-split"])
def test_round_trip_two_ranks_two_workers_every_sample_once(s3_root, per_shard):
    """300 images; 8 shards (split by shard) or 2 shards (fewer than 4 readers: split by sample)."""
    prefix = storage.join(s3_root, "datasets", "cartoon")
    written = write_dataset(prefix, 300, per_shard)
    assert written == [storage.join(prefix, f"shard-{i:06d}.tar") for i in range(-(-300 // per_shard))]
    assert shards.list_shards(prefix) == written
    seen = read_all_readers(prefix, world_size=2, num_workers=2)
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]           # nobody got zero samples
    counts = collections.Counter(k for keys in seen.values() for k in keys)
    assert sorted(counts) == [f"img-{i:05d}" for i in range(300)]     # every sample ...
    assert set(counts.values()) == {1}                                 # ... exactly once
    sizes = [len(v) for v in seen.values()]
    assert max(sizes) - min(sizes) <= per_shard


def test_plan_split_rank_first_then_worker():
    assert shards.plan_split(8, rank=1, world_size=2, worker=0, num_workers=2) == ("shards", [1, 5])
    assert shards.plan_split(8, rank=1, world_size=2, worker=1, num_workers=2) == ("shards", [3, 7])
    assert shards.plan_split(5, rank=0, world_size=2, worker=1, num_workers=2) == ("shards", [2])
    assert shards.plan_split(3, rank=1, world_size=2, worker=1, num_workers=2) == ("samples", (3, 4))
    with pytest.raises(ValueError, match="bad split"):
        shards.plan_split(3, rank=2, world_size=2, worker=0, num_workers=1)


def test_local_root_iterator_api_entries_and_decode(local_root):
    prefix = storage.join(local_root, "pairs", "anime", "level1")
    w = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    with shards.ShardWriter(prefix, max_samples=2) as writer:
        for i in range(5):
            writer.write({"__key__": f"p{i}", "S.png": png_bytes(i), "P.png": png_bytes(i + 100),
                          "w_plus.npy": w + i, "json": {"i": i}, "txt": f"note {i}"})
    assert len(writer.shards) == 3
    reader = shards.read_samples(prefix)
    samples = list(reader)
    assert [s["__key__"] for s in samples] == [f"p{i}" for i in range(5)]
    assert reader.stats.samples == 5 and reader.stats.corrupt == 0
    first = shards.decode_sample(samples[3])
    assert set(first) == {"__key__", "__url__", "S.png", "P.png", "w_plus.npy", "json", "txt"}  # case kept
    assert first["S.png"] == png_bytes(3) and first["P.png"] == png_bytes(103)
    np.testing.assert_array_equal(first["w_plus.npy"], w + 3)
    assert first["json"] == {"i": 3} and first["txt"] == b"note 3"
    # Explicit URL lists and one shard work too.
    assert [s["__key__"] for s in shards.read_samples(writer.shards[1:2])] == ["p2", "p3"]


def test_fewer_samples_than_readers_with_repeat_raises_instead_of_hanging(s3_root):
    prefix = storage.join(s3_root, "tiny")
    write_dataset(prefix, 3, 10)
    got = [list(shards.read_samples(prefix, world_size=2, rank=r, num_workers=2, worker=w)) for r in (0, 1)
           for w in (0, 1)]
    assert [len(g) for g in got] == [1, 1, 1, 0]
    starving = shards.read_samples(prefix, rank=1, world_size=2, worker=1, num_workers=2, repeat=True)
    with pytest.raises(RuntimeError, match=r"reader rank 1/2 worker 1/2 got no samples from 1 shard"):
        next(iter(starving))
    cycling = iter(shards.read_samples(prefix, repeat=True, shuffle_buffer=2, seed=1))
    keys = [next(cycling)["__key__"] for _ in range(9)]
    assert collections.Counter(keys) == {"img-00000": 3, "img-00001": 3, "img-00002": 3}


def test_corrupt_shard_and_incomplete_samples_are_counted_and_skipped(storage_root):
    prefix = storage.join(storage_root, "ds")
    written = write_dataset(prefix, 30, 10)
    data = storage.read_bytes(written[1])
    storage.write_bytes(written[1], data[: len(data) // 2])           # truncated in the middle of shard 1
    reader = shards.read_samples(prefix, required=("png", "json"))
    keys = [s["__key__"] for s in reader]
    first, last = keys[:10], [k for k in keys if int(k[4:]) >= 20]
    assert first == [f"img-{i:05d}" for i in range(10)] and last == [f"img-{i:05d}" for i in range(20, 30)]
    middle = [k for k in keys if 10 <= int(k[4:]) < 20]
    assert 0 < len(middle) < 10
    assert reader.stats.corrupt >= 1 and reader.stats.samples == len(keys)
    assert any("shard-000001.tar" in e for e in reader.stats.errors)


def test_writer_validation_discard_and_stale_shards(local_root):
    prefix = storage.join(local_root, "ds")
    with pytest.raises(ValueError, match="no dots"):
        with shards.ShardWriter(prefix) as writer:
            writer.write({"__key__": "a.b", "png": b"x"})
    with pytest.raises(ValueError, match="duplicate sample __key__ 'a'"):
        with shards.ShardWriter(prefix) as writer:
            writer.write({"__key__": "a", "png": b"x"})
            writer.write({"__key__": "a", "png": b"y"})
    with pytest.raises(TypeError, match=r"cannot encode object as \.png"):
        with shards.ShardWriter(prefix) as writer:
            writer.write({"__key__": "a", "png": object()})
    assert shards.list_shards(prefix) == []                           # partial shards were discarded
    write_dataset(prefix, 25, 5)
    assert len(shards.list_shards(prefix)) == 5
    with shards.ShardWriter(prefix, max_samples=5, replace_existing=True) as writer:
        for i in range(7):
            writer.write({"__key__": f"n{i}", "png": b"x"})
    assert shards.list_shards(prefix) == writer.shards and len(writer.shards) == 2
    with pytest.raises(storage.NotFoundError, match="no shard-NNNNNN.tar files found"):
        shards.read_samples(storage.join(local_root, "empty"))


def test_webdataset_pipeline_reads_s3_through_registered_scheme(s3_root):
    prefix = storage.join(s3_root, "wds")
    urls = write_dataset(prefix, 12, 5)
    dataset = webdataset.WebDataset(urls, shardshuffle=False).decode("pil")
    keys = [(s["__key__"], s["json"]["index"], s["png"].size) for s in dataset]
    assert keys == [(f"img-{i:05d}", i, (16, 16)) for i in range(12)]


def test_missing_bucket_is_raised_not_counted(s3_server):
    with pytest.raises(storage.NoSuchBucketError):
        list(shards.read_samples(["s3://no-such-bucket-shards/shard-000000.tar"]))
