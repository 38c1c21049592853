"""e4e (Encoder4Editing) checkpoints give e4e's codes, not pSp's, and serve as E_w+ like any pSp-layout encoder."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fstrain.models.psp import Encoder4Editing, build_encoder, load_encoder, save_encoder
from fstrain.models.registry import WeightsMismatchError, load_torch, save_torch

N_STYLES = 8
COARSE, MIDDLE = 3, 7  # e4e: styles 0-2 from the coarsest map, 3-6 from the middle FPN level, the rest the finest


def e4e_reference(core, latent_avg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """e4e's published forward: one base code w0 from the coarsest feature map copied to every layer, then layer i
    (i >= 1) adds its own offset read from the FPN level of that layer; start_from_latent_avg adds the average."""
    units = core.config["units"]
    stage_ends = {sum(units[: k + 1]) - 1 for k in (1, 2, 3)}  # e4e: body[6], body[20], body[23] for IR-SE50
    h = core.input_layer(x)
    maps = []
    for i, unit in enumerate(core.body):
        h = unit(h)
        if i in stage_ends:
            maps.append(h)
    c1, c2, c3 = maps

    def up_add(top, lateral):
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    w = core.styles[0](c3).unsqueeze(1).repeat(1, N_STYLES, 1)
    features = c3
    for i in range(1, N_STYLES):
        if i == COARSE:
            p2 = up_add(c3, core.latlayer1(c2))
            features = p2
        elif i == MIDDLE:
            features = up_add(p2, core.latlayer2(c1))
        w[:, i] += core.styles[i](features)
    return w + latent_avg


def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture
def e4e_file(tmp_path):
    """A checkpoint in e4e's own layout: pSp keys, e4e's opts only (architecture read off the weights)."""
    core = build_encoder("tiny", n_styles=N_STYLES, style_dim=512, seed=3)
    latent_avg = torch.randn(N_STYLES, 512, generator=torch.Generator().manual_seed(4))
    state = {f"encoder.{k}": v for k, v in core.state_dict().items()}
    state["decoder.style.1.weight"] = torch.randn(8, 8)
    uri = str(tmp_path / "e4e_ffhq_encode.pt")
    save_torch({"state_dict": state, "latent_avg": latent_avg,
                "opts": {"encoder_type": "Encoder4Editing", "stylegan_size": 32, "start_from_latent_avg": True,
                         "input_nc": 3, "output_size": 32}}, uri)
    return uri, core.eval(), latent_avg


def test_e4e_checkpoint_gives_e4e_codes(e4e_file):
    uri, core, latent_avg = e4e_file
    encoder = load_encoder(uri)
    assert isinstance(encoder.encoder, Encoder4Editing) and encoder.space == "w+"
    x = _images()
    with torch.no_grad():
        codes = encoder(x)
        torch.testing.assert_close(codes, e4e_reference(core, latent_avg, x), atol=1e-6, rtol=1e-6)
        # Read as a pSp encoder the same weights give other codes: the silent error this guards against.
        ckpt = load_torch(uri)
        ckpt["opts"]["encoder_type"] = "GradualStyleEncoder"
        save_torch(ckpt, uri + ".psp")
        assert (load_encoder(uri + ".psp")(x) - codes).abs().max() > 1e-2


def test_e4e_round_trip_and_latent_avg_shapes(e4e_file, tmp_path):
    uri, core, latent_avg = e4e_file
    encoder = load_encoder(uri)
    again = str(tmp_path / "again.pt")
    save_encoder(again, encoder)
    assert load_torch(again)["opts"]["encoder_type"] == "Encoder4Editing"
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(again)(x), encoder(x), atol=0, rtol=0)
    # e4e files may store the average as (1, 512) (mean_latent) rather than one row per layer.
    ckpt = load_torch(uri)
    ckpt["latent_avg"] = latent_avg[:1]
    save_torch(ckpt, uri)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(uri)(x), e4e_reference(core, latent_avg[:1], x), atol=1e-6,
                                   rtol=1e-6)


def test_unsupported_encoder_type_is_named(e4e_file):
    uri, _, _ = e4e_file
    ckpt = load_torch(uri)
    ckpt["opts"]["encoder_type"] = "BackboneEncoderUsingLastLayerIntoW"
    save_torch(ckpt, uri)
    with pytest.raises(WeightsMismatchError, match=r"e4e_ffhq_encode\.pt: opts encoder_type="
                                                   r"'BackboneEncoderUsingLastLayerIntoW' is not supported"):
        load_encoder(uri)
