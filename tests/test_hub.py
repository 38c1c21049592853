"""The model hub: resolve -> fetch once per machine (locked, pinned) -> detect format -> load strictly, per key."""
from __future__ import annotations

import fcntl
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

from fstrain.data import storage
from fstrain.models import registry
from fstrain.models.checkpoints import CheckpointError, save_generator
from fstrain.models.hub import ModelHub, resolve_uri
from fstrain.models.stylegan2 import Generator
from support import nvidia_networks as nv


@dataclass
class Models:
    """The shape of the config's `models` section, as the hub reads it."""
    base_generator: str = "models/generator.pt"
    encoder_wplus: str = "models/encoder_wplus.pt"
    encoder_zplus: str = "models/encoder_zplus.pt"
    identity: str = "models/identity.pth"
    lpips_backbone: str = "models/lpips_alex_backbone_RANDOM.pth"
    identity_kind: str = "auto"
    lpips_net: str = "alex"
    base_generator_which: str = "g_ema"
    sha256: dict = field(default_factory=dict)


def test_resolve_uri_rules():
    assert resolve_uri("models/g.pt", "/data/root") == "/data/root/models/g.pt"
    assert resolve_uri("models/g.pt", "s3://b/prefix/") == "s3://b/prefix/models/g.pt"
    assert resolve_uri("/abs/g.pt", "s3://b/p") == "/abs/g.pt"
    assert resolve_uri("s3://other/g.pt", "/root") == "s3://other/g.pt"
    assert resolve_uri("rel/g.pt", "") == "rel/g.pt"


def test_every_configured_network_loads_through_one_hub(tiny_models):
    hub = ModelHub(Models(sha256={k: v["sha256"] for k, v in tiny_models.manifest["models"].items()}),
                   str(tiny_models.root.parent))
    hub.models = replace(hub.models, **{k: f"{tiny_models.root.name}/{Path(getattr(tiny_models, k)).name}"
                                        for k in ("encoder_wplus", "encoder_zplus", "identity", "lpips_backbone")},
                         base_generator=f"{tiny_models.root.name}/{Path(tiny_models.generator).name}")
    loaded = hub.generator(expected_size=32)
    assert loaded.generator.size == 32 and loaded.source == hub.uri("base_generator")
    assert hub.encoder("encoder_wplus").space == "w+" and hub.encoder("encoder_zplus").space == "z+"
    assert isinstance(hub.identity(), torch.nn.Module) and isinstance(hub.lpips(), torch.nn.Module)
    assert hub.sha256("base_generator") == tiny_models.manifest["models"]["base_generator"]["sha256"]
    # Wrong architecture for the configuration and a stale pin: one line each, naming key, file and fix.
    with pytest.raises(CheckpointError, match=r"^models\.base_generator: .*generator\.pt: a 32 px generator, but "
                                              r"data\.image_size is 1024"):
        hub.generator(expected_size=1024)
    stale = ModelHub(replace(hub.models, sha256={"identity": "0" * 64}), hub.root)
    with pytest.raises(registry.ChecksumError, match=r"^models\.identity: .*identity\.pth: sha256 is"):
        stale.identity()
    with pytest.raises(registry.MissingWeightsError, match=r"^models\.encoder_wplus is empty"):
        ModelHub(replace(hub.models, encoder_wplus=""), hub.root).encoder()


def test_generator_kinds_and_which_come_from_the_config(tmp_path):
    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    snapshot = nv.snapshot(seed=5)
    (root / "models" / "ffhq.pkl").write_bytes(nv.network_pickle_bytes(snapshot))
    hub = ModelHub(Models(base_generator="models/ffhq.pkl"), str(root))
    z = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image, _ = hub.generator().generator([z], randomize_noise=False)
        assert (image - snapshot["G_ema"](z)).abs().max() < 1e-4
        hub_g = ModelHub(Models(base_generator="models/ffhq.pkl", base_generator_which="g"), str(root))
        image_g, _ = hub_g.generator().generator([z], randomize_noise=False)
        assert (image_g - snapshot["G"](z)).abs().max() < 1e-4

    torch.manual_seed(0)
    g = Generator(16, 32, 1, channel_max=8)
    torch.save({"g": g.state_dict()}, root / "models" / "g_only.pt")   # JoJoGAN-style
    assert ModelHub(Models(base_generator="models/g_only.pt"), str(root)).generator().generator.size == 16


def test_remote_generators_are_fetched_once_with_their_sidecar(s3_root, tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    g = Generator(16, 32, 1, channel_max=8, lr_mlp=0.1)   # lr_mlp is only in the sidecar
    local = str(tmp_path / "g.pt")
    save_generator(local, g, torch.zeros(32), {"style": "anime"})
    uri = storage.join(s3_root, "styles", "anime", "generator.pt")
    storage.upload_file(local, uri)
    storage.upload_file(local + ".json", uri + ".json")
    hub = ModelHub(Models(), s3_root)
    loaded = hub.generator_at("styles/anime/generator.pt")
    assert loaded.source == uri and loaded.metadata["style"] == "anime" and loaded.generator.lr_mlp == 0.1
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert len(cached) == 2  # the file and its sidecar
    hub.generator_at("styles/anime/generator.pt")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == cached
    storage.write_bytes(uri, b"PK\x03\x04 half a zip")
    with pytest.raises(CheckpointError, match=r"s3://.*/styles/anime/generator\.pt: the file is truncated"):
        hub.generator_at(uri)


def test_concurrent_fetches_wait_for_the_first_download(s3_root, tmp_path):
    uri = storage.join(s3_root, "models", "big.pt")
    storage.write_bytes(uri, b"weights")
    pin = registry.sha256_file(_write(tmp_path / "ref", b"weights"))
    cache = tmp_path / "cache"
    cache.mkdir()
    lock = open(cache / f".{pin}.lock", "a+")
    fcntl.flock(lock, fcntl.LOCK_EX)          # another process is downloading this file
    result: list[Path] = []
    worker = threading.Thread(target=lambda: result.append(registry.fetch(uri, pin, cache_dir=cache)))
    worker.start()
    worker.join(timeout=1.0)
    assert worker.is_alive() and not result  # waits instead of downloading a second copy
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    worker.join(timeout=30)
    assert result and result[0].read_bytes() == b"weights"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_run_paths_under_a_relative_root_load_once_the_entry_point_makes_the_root_absolute(tmp_path, monkeypatch):
    """cluster.study / cluster.demo pass `layout.absolute_root(--root)` on: a run path built from a relative root is
    itself relative, and the hub would root it a second time (the study's evaluation once failed on
    demo-out/demo-out/runs/...)."""
    from fstrain import layout
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path / "cache"))
    relative = layout.final_generator(layout.mode_run("rel-root", "run1", "anime", "sc+pc"))
    save_generator(relative, Generator(16, 32, 1, channel_max=8), torch.zeros(32), {"style": "anime"})
    with pytest.raises(registry.MissingWeightsError, match="rel-root/rel-root/runs"):
        ModelHub(Models(), "rel-root").generator_at(relative)
    root = layout.absolute_root("rel-root")
    assert root == str(tmp_path / "rel-root") and layout.absolute_root("s3://bucket/p") == "s3://bucket/p"
    loaded = ModelHub(Models(), root).generator_at(layout.final_generator(layout.mode_run(root, "run1", "anime",
                                                                                          "sc+pc")))
    assert loaded.generator.size == 16 and loaded.metadata["style"] == "anime"
