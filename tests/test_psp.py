"""pSp GradualStyleEncoder: real key layout, W+/Z+ outputs, strict pSp-format round trips, clear errors."""
from __future__ import annotations

import pytest
import torch

from fstrain.models.psp import (GradualStyleEncoder, PSPEncoder, build_encoder, load_encoder,
                                load_psp_decoder_state, save_encoder)
from fstrain.models.registry import WeightsMismatchError, load_torch, save_torch


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def tiny_wplus() -> PSPEncoder:
    core = build_encoder("tiny", n_styles=8, style_dim=512, seed=1)
    avg = torch.randn(8, 512, generator=torch.Generator().manual_seed(2))
    return PSPEncoder(core, avg, "w+").eval()


def test_default_encoder_has_psp_layout():
    with torch.device("meta"):
        enc = GradualStyleEncoder()
    shapes = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert enc.taps == (6, 20, 23)  # pSp's c1/c2/c3 taps
    assert len({k.split(".")[1] for k in shapes if k.startswith("body.")}) == 24
    assert len({k.split(".")[1] for k in shapes if k.startswith("styles.")}) == 18
    assert shapes["input_layer.0.weight"] == (64, 3, 3, 3)
    assert "body.0.shortcut_layer.0.weight" not in shapes  # 64 -> 64: MaxPool shortcut, no weights
    assert shapes["body.3.shortcut_layer.0.weight"] == (128, 64, 1, 1)
    assert shapes["body.0.res_layer.5.fc1.weight"] == (4, 64, 1, 1)
    assert shapes["body.23.res_layer.3.weight"] == (512, 512, 3, 3)
    assert shapes["latlayer1.weight"] == (512, 256, 1, 1) and shapes["latlayer2.weight"] == (512, 128, 1, 1)
    # map2style: 4 stride-2 convs from the 16x16 map, 5 from 32x32, 6 from 64x64 (keys at even indices)
    for style, n_convs in ((0, 4), (3, 5), (17, 6)):
        convs = {int(k.split(".")[3]) for k in shapes if k.startswith(f"styles.{style}.convs.")}
        assert convs == set(range(0, 2 * n_convs, 2))
    assert shapes["styles.17.linear.weight"] == (512, 512) and shapes["styles.17.linear.bias"] == (512,)


def test_wplus_adds_latent_avg_and_zplus_does_not(tiny_wplus):
    x = _images(4)
    with torch.no_grad():
        raw = tiny_wplus.encoder(x)
        w_plus = tiny_wplus(x)
        z_plus = PSPEncoder(tiny_wplus.encoder, None, "z+").eval()(x)
    assert w_plus.shape == (4, 8, 512)
    torch.testing.assert_close(w_plus, raw + tiny_wplus.latent_avg)
    torch.testing.assert_close(z_plus, raw)
    # Larger inputs are pooled to the encoder's input size first.
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(tiny_wplus(big), w_plus, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_is_strict_and_exact(tiny_wplus, tmp_path):
    uri = str(tmp_path / "enc.pt")
    decoder = {"style.1.weight": torch.randn(4, 4), "input.input": torch.randn(1, 8, 4, 4)}
    save_encoder(uri, tiny_wplus, opts={"dataset_type": "ffhq_encode"}, decoder_state=decoder)

    raw = load_torch(uri)
    assert set(raw) == {"state_dict", "latent_avg", "opts"}
    assert all(k.startswith(("encoder.", "decoder.")) for k in raw["state_dict"])
    assert raw["opts"]["n_styles"] == 8 and raw["opts"]["dataset_type"] == "ffhq_encode"
    assert raw["latent_avg"].shape == (8, 512)

    loaded = load_encoder(uri)
    assert loaded.space == "w+" and not loaded.training
    original = tiny_wplus.encoder.state_dict()
    for key, value in loaded.encoder.state_dict().items():
        assert torch.equal(value, original[key]), key
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny_wplus(x), rtol=0, atol=0)
    dec = load_psp_decoder_state(uri)
    assert set(dec) == set(decoder) and torch.equal(dec["input.input"], decoder["input.input"])


def test_third_party_opts_infer_architecture_and_space(tiny_wplus, tmp_path):
    """Files written by pSp / DualStyleGAN carry only their own opts: read the architecture off the weights."""
    uri = str(tmp_path / "enc.pt")
    save_encoder(uri, tiny_wplus)
    ckpt = load_torch(uri)
    ckpt["opts"] = {"n_styles": 8, "start_from_latent_avg": True, "output_size": 32, "input_nc": 3}
    save_torch(ckpt, uri)
    loaded = load_encoder(uri)
    assert loaded.encoder.config == tiny_wplus.encoder.config
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny_wplus(x), rtol=0, atol=0)

    ckpt["opts"] = {"z_plus_latent": True}  # DualStyleGAN-style Z+ encoder
    save_torch(ckpt, uri)
    zplus = load_encoder(uri)
    assert zplus.space == "z+"
    with torch.no_grad():
        torch.testing.assert_close(zplus(x), tiny_wplus.encoder(x), rtol=0, atol=0)
    assert load_encoder(uri, space="w+").space == "w+"  # explicit space wins


def test_missing_and_mismatched_keys_are_named(tiny_wplus, tmp_path):
    uri = str(tmp_path / "enc.pt")
    save_encoder(uri, tiny_wplus)
    ckpt = load_torch(uri)
    del ckpt["state_dict"]["encoder.styles.3.linear.bias"]
    save_torch(ckpt, tmp_path / "missing.pt")
    with pytest.raises(WeightsMismatchError, match=r"missing key 'styles\.3\.linear\.bias'"):
        load_encoder(str(tmp_path / "missing.pt"))

    ckpt = load_torch(uri)
    ckpt["state_dict"]["encoder.latlayer1.weight"] = torch.zeros(48, 31, 1, 1)
    save_torch(ckpt, tmp_path / "shape.pt")
    with pytest.raises(WeightsMismatchError, match=r"shape mismatch for 'latlayer1\.weight'"):
        load_encoder(str(tmp_path / "shape.pt"))

    ckpt = load_torch(uri)
    ckpt["latent_avg"] = torch.zeros(7, 512)
    save_torch(ckpt, tmp_path / "avg.pt")
    with pytest.raises(WeightsMismatchError, match="latent_avg"):
        load_encoder(str(tmp_path / "avg.pt"))

    save_torch({"encoder.x": torch.zeros(1)}, tmp_path / "flat.pt")
    with pytest.raises(WeightsMismatchError, match="state_dict"):
        load_encoder(str(tmp_path / "flat.pt"))


def test_tiny_fixture_encoders_start_from_generator_mean(tiny_models):
    from fstrain.models.checkpoints import load_generator

    g = load_generator(tiny_models.generator)
    wplus, zplus = load_encoder(tiny_models.encoder_wplus), load_encoder(tiny_models.encoder_zplus)
    assert (wplus.space, zplus.space) == ("w+", "z+")
    torch.testing.assert_close(wplus.latent_avg, g.latent_avg.expand(g.generator.n_latent, -1))
    x = _images(2, tiny_models.size)
    with torch.no_grad():
        codes = wplus(x)
        image = g.generator.synthesis(codes)
    assert codes.shape == (2, g.generator.n_latent, g.generator.style_dim)
    assert image.shape == (2, 3, tiny_models.size, tiny_models.size) and torch.isfinite(image).all()
