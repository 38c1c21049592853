"""Generator checkpoint I/O: rosinality layouts in, rosinality layout + metadata sidecar out, strict errors."""
from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
import torch

from fstrain.models.checkpoints import (CheckpointError, infer_discriminator_architecture,
                                        infer_generator_architecture, load_generator, metadata_uri, save_generator)
from fstrain.models.stylegan2 import Discriminator, Generator

STYLE_DIM = 32


def tiny_generator(seed: int = 0, size: int = 32) -> Generator:
    torch.manual_seed(seed)
    g = Generator(size, STYLE_DIM, 2, channel_multiplier=1, channel_max=16)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight") or name.endswith("activate.bias"):
                p.normal_(0, 0.2)
    return g.eval()


def tiny_discriminator(seed: int = 1, size: int = 32) -> Discriminator:
    torch.manual_seed(seed)
    return Discriminator(size, channel_multiplier=1, channel_max=16).eval()


def render(g: Generator, seed: int = 5) -> torch.Tensor:
    z = torch.randn(2, g.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        img, _ = g([z], randomize_noise=False)
    return img


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------- our own format


def test_save_load_round_trip_is_strict_and_renders_identically(tmp_path):
    g, d = tiny_generator(), tiny_discriminator()
    latent_avg = torch.randn(STYLE_DIM)
    uri = str(tmp_path / "styles" / "cartoon" / "generator.pt")
    assert save_generator(uri, g, latent_avg, {"style": "cartoon", "step": 120}, discriminator=d) == uri

    # The file is plain rosinality layout: readable with weights_only and only these keys.
    raw = torch.load(uri, weights_only=True)
    assert sorted(raw) == ["d", "g_ema", "latent_avg"]
    assert raw["latent_avg"].shape == (STYLE_DIM,)
    sidecar = json.loads(open(metadata_uri(uri)).read())
    assert sidecar["style"] == "cartoon" and sidecar["step"] == 120
    assert sidecar["format"] == "rosinality-stylegan2"
    assert sidecar["architecture"] == {"size": 32, "style_dim": STYLE_DIM, "n_mlp": 2, "channel_multiplier": 1,
                                       "channel_max": 16, "blur_kernel": [1, 3, 3, 1], "lr_mlp": 0.01}

    loaded = load_generator(uri)
    assert loaded.source == uri and loaded.metadata["style"] == "cartoon"
    assert_same_state(loaded.generator, g)
    assert_same_state(loaded.discriminator, d)
    torch.testing.assert_close(loaded.latent_avg, latent_avg, atol=0, rtol=0)
    assert torch.equal(render(loaded.generator), render(g))
    assert not loaded.generator.training
    # No temp files left behind by the atomic writes.
    assert sorted(os.listdir(tmp_path / "styles" / "cartoon")) == ["generator.pt", "generator.pt.json"]


def test_sidecar_only_settles_what_weights_cannot_show(tmp_path):
    g = Generator(16, STYLE_DIM, 1, channel_max=8, lr_mlp=0.1)
    uri = str(tmp_path / "g.pt")
    save_generator(uri, g, torch.zeros(STYLE_DIM), {})
    assert load_generator(uri).generator.lr_mlp == 0.1
    # Without the sidecar the architecture still comes from the weights (lr_mlp falls back to rosinality's 0.01).
    os.remove(metadata_uri(uri))
    loaded = load_generator(uri)
    assert loaded.generator.architecture() | {"lr_mlp": 0.1} == g.architecture()
    assert loaded.metadata == {}


def test_save_rejects_bad_latent_avg_and_unserialisable_metadata(tmp_path):
    g = tiny_generator()
    with pytest.raises(ValueError, match="style_dim=32"):
        save_generator(str(tmp_path / "a.pt"), g, torch.zeros(7), {})
    with pytest.raises(ValueError, match="JSON"):
        save_generator(str(tmp_path / "b.pt"), g, torch.zeros(STYLE_DIM), {"bad": object()})
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


# ---------------------------------------------------------------- rosinality files


def test_loads_rosinality_training_checkpoint_with_argparse_args(tmp_path):
    g, g_ema, d = tiny_generator(seed=0), tiny_generator(seed=1), tiny_discriminator()
    g_optim = torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_optim = torch.optim.Adam(d.parameters(), lr=0.002, betas=(0.0, 0.99))
    args = argparse.Namespace(size=32, channel_multiplier=1, latent=STYLE_DIM, n_mlp=2, r1=10.0, path="lmdb/",
                              augment=False)
    path = str(tmp_path / "010000.pt")
    # Written exactly as rosinality's train.py does (full pickle, argparse.Namespace inside).
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
                "g_optim": g_optim.state_dict(), "d_optim": d_optim.state_dict(), "args": args,
                "ada_aug_p": 0.0}, path)

    loaded = load_generator(path)
    assert_same_state(loaded.generator, g_ema)
    assert_same_state(loaded.discriminator, d)
    assert loaded.metadata["training_args"]["r1"] == 10.0
    # Training checkpoints carry no latent_avg: it is computed reproducibly, and the metadata says so.
    assert "mean_latent(4096" in loaded.metadata["latent_avg_source"]
    torch.testing.assert_close(loaded.latent_avg, load_generator(path).latent_avg, atol=0, rtol=0)
    torch.testing.assert_close(loaded.latent_avg, g_ema.mean_latent(4096, torch.Generator().manual_seed(0))[0])

    assert_same_state(load_generator(path, which="g").generator, g)
    assert load_generator(path, load_discriminator=False).discriminator is None


def test_loads_converted_checkpoint_and_bare_state_dict(tmp_path):
    g = tiny_generator()
    latent_avg = torch.randn(STYLE_DIM)
    converted = str(tmp_path / "converted.pt")
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_avg}, converted)
    loaded = load_generator(converted)
    assert loaded.discriminator is None
    assert torch.equal(render(loaded.generator), render(g))
    torch.testing.assert_close(loaded.latent_avg, latent_avg, atol=0, rtol=0)

    bare = str(tmp_path / "bare.pt")
    torch.save(g.state_dict(), bare)
    assert_same_state(load_generator(bare).generator, g)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_architecture_is_inferred_from_full_size_state_dicts(multiplier):
    with torch.device("meta"):
        g = Generator(1024, 512, 8, channel_multiplier=multiplier)
        d = Discriminator(256, channel_multiplier=multiplier)
    arch = infer_generator_architecture(g.state_dict())
    assert (arch["size"], arch["style_dim"], arch["n_mlp"]) == (1024, 512, 8)
    assert (arch["channel_multiplier"], arch["channel_max"]) == (multiplier, 512)
    d_arch = infer_discriminator_architecture(d.state_dict())
    assert (d_arch["size"], d_arch["channel_multiplier"], d_arch["channel_max"]) == (256, multiplier, 512)


# ---------------------------------------------------------------- errors name file and key


def saved_converted(tmp_path, state: dict, name: str = "broken.pt") -> str:
    path = str(tmp_path / name)
    torch.save({"g_ema": state, "latent_avg": torch.zeros(STYLE_DIM)}, path)
    return path


def test_missing_key_is_named(tmp_path):
    state = tiny_generator().state_dict()
    del state["convs.3.conv.weight"]
    path = saved_converted(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"broken\.pt: .*missing key 'convs\.3\.conv\.weight' "
                                              r"\(expected shape \(1, 16, 16, 3, 3\)\)"):
        load_generator(path)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    state = tiny_generator().state_dict()
    state["convs.1.activate.bias"] = torch.zeros(15)
    path = saved_converted(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'convs\.1\.activate\.bias': "
                                              r"file \(15,\), model \(16,\)"):
        load_generator(path)


def test_unexpected_key_and_missing_entry_are_named(tmp_path):
    state = tiny_generator().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected key 'extra\.weight'"):
        load_generator(saved_converted(tmp_path, state))
    path = str(tmp_path / "only_d.pt")
    torch.save({"d": tiny_discriminator().state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"only_d\.pt: no 'g_ema' generator in the file \(it has \['d'\]\)"):
        load_generator(path)


# ---------------------------------------------------------------- generator-only files and `which`


def test_generator_only_files_load_through_which(tmp_path, caplog):
    g, g_ema = tiny_generator(seed=3), tiny_generator(seed=4)
    only_g = str(tmp_path / "jojogan_style.pt")
    torch.save({"g": g.state_dict()}, only_g)   # JoJoGAN-style fine-tune: the training generator alone
    with caplog.at_level("WARNING", logger="fstrain.models.checkpoints"):
        loaded = load_generator(only_g)
    assert "no 'g_ema' in the file, using its 'g'" in caplog.text
    assert torch.equal(render(loaded.generator), render(g))
    assert loaded.discriminator is None and loaded.metadata["latent_avg_source"].startswith("computed")
    assert torch.equal(render(load_generator(only_g, which="g").generator), render(g))

    only_ema = str(tmp_path / "ema_only.pt")
    torch.save({"g_ema": g_ema.state_dict()}, only_ema)
    assert torch.equal(render(load_generator(only_ema).generator), render(g_ema))
    with pytest.raises(CheckpointError, match=r"ema_only\.pt: no 'g' generator in the file .*; set which: g_ema"):
        load_generator(only_ema, which="g")

    both = str(tmp_path / "both.pt")
    torch.save({"g": g.state_dict(), "g_ema": g_ema.state_dict()}, both)
    assert torch.equal(render(load_generator(both).generator), render(g_ema))
    assert torch.equal(render(load_generator(both, which="g").generator), render(g))
    with pytest.raises(CheckpointError, match=r"which='G_ema'; choose 'g_ema'"):
        load_generator(both, which="G_ema")


def test_bad_files_get_one_line_each(tmp_path):
    good = str(tmp_path / "good.pt")
    save_generator(good, tiny_generator(), torch.zeros(STYLE_DIM), {})
    data = open(good, "rb").read()
    cases = {
        "empty.pt": (b"", r"empty\.pt: the file is empty \(0 bytes\)"),
        "cut.pt": (data[: len(data) // 2], r"cut\.pt: the file is truncated or damaged"),
        "photo.pt": (b"\x89PNG\r\n\x1a\nIHDR", r"photo\.pt: not a model file"),
    }
    for name, (content, pattern) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=pattern) as info:
            load_generator(str(tmp_path / name))
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    # torch's pre-1.6 (non-zip) format reads too; cut short it says so.
    legacy = tmp_path / "legacy.pt"
    torch.save({"g_ema": tiny_generator().state_dict(), "latent_avg": torch.zeros(STYLE_DIM)}, legacy,
               _use_new_zipfile_serialization=False)
    assert torch.equal(render(load_generator(str(legacy)).generator), render(tiny_generator()))
    (tmp_path / "legacy_cut.pt").write_bytes(legacy.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"legacy_cut\.pt: the file is truncated"):
        load_generator(str(tmp_path / "legacy_cut.pt"))
    # A generator of the wrong resolution for the configuration, in one line.
    with pytest.raises(CheckpointError, match=r"good\.pt: a 32 px generator, but data\.image_size is 1024; point "
                                              r"the config at a 1024 px generator or set data\.image_size: 32"):
        load_generator(good, expected_size=1024, size_setting="data.image_size")
    assert load_generator(good, expected_size=32).generator.size == 32


def test_latent_avg_of_wrong_size_is_rejected(tmp_path):
    path = str(tmp_path / "avg.pt")
    torch.save({"g_ema": tiny_generator().state_dict(), "latent_avg": torch.zeros(512)}, path)
    with pytest.raises(CheckpointError, match="'latent_avg' has 512 values.*style_dim is 32"):
        load_generator(path)


def test_unreadable_inputs_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint not found"):
        load_generator(str(tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match=r"garbage\.pt: not a model file \(it starts with b'definite'\); "
                                              r"expected a PyTorch checkpoint"):
        load_generator(str(garbage))
    # Arbitrary pickled objects are refused by the weights-only unpickler, without advice to disable it.
    evil = tmp_path / "evil.pt"
    torch.save({"g_ema": {}, "payload": pickle.PicklingError("x")}, str(evil))
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused: .*'pickle\.PicklingError'") as info:
        load_generator(str(evil))
    assert "weights_only" not in str(info.value)
    bad_sidecar = tmp_path / "ok.pt"
    save_generator(str(bad_sidecar), tiny_generator(), torch.zeros(STYLE_DIM), {})
    (tmp_path / "ok.pt.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"ok\.pt\.json: metadata sidecar is not valid JSON"):
        load_generator(str(bad_sidecar))


# ---------------------------------------------------------------- object storage (real moto server over HTTP)


def test_round_trip_through_s3(s3_root):
    from fstrain.data import storage

    g, d = tiny_generator(), tiny_discriminator()
    uri = storage.join(s3_root, "styles", "anime", "generator.pt")
    save_generator(uri, g, torch.ones(STYLE_DIM), {"style": "anime"}, discriminator=d)
    assert storage.list_uris(storage.join(s3_root, "styles")) == [uri, uri + ".json"]
    assert storage.read_json(uri + ".json")["style"] == "anime"

    loaded = load_generator(uri)
    assert loaded.source == uri and loaded.metadata["style"] == "anime"
    assert torch.equal(render(loaded.generator), render(g))
    assert_same_state(loaded.discriminator, d)
    with pytest.raises(CheckpointError, match=r"s3://.*/missing\.pt: checkpoint not found"):
        load_generator(storage.join(s3_root, "missing.pt"))
