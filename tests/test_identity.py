"""Identity nets: arcface_torch / pSp IR-SE layouts, crops, ID loss behaviour, strict raw-state-dict round trips."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fstrain.models.identity import (ARCFACE_CROP, ARCFACE_UNITS, IdentityEncoder, IResNet, IRSEBackbone,
                                     _crop_and_resize, detect_kind, identity_loss, load_identity, save_identity,
                                     tiny_arcface)
from fstrain.models.registry import WeightsMismatchError, load_torch, save_torch


def _faces(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _tiny_irse(input_size: int = 32) -> IRSEBackbone:
    torch.manual_seed(0)
    return IRSEBackbone(input_size, units=(1, 1, 1, 1), stage_channels=(16, 24, 32, 48))


@pytest.mark.parametrize("name,n_keys", [("r50", 475), ("r100", 925)])
def test_arcface_layouts_match_insightface_key_counts(name, n_keys):
    with torch.device("meta"):
        net = IResNet(ARCFACE_UNITS[name])
    state = net.state_dict()
    assert len(state) == n_keys
    assert tuple(state["fc.weight"].shape) == (512, 512 * 7 * 7)
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (64, 64, 1, 1)
    assert {"prelu.weight", "features.running_var", "layer4.2.bn3.bias"} <= set(state)
    assert detect_kind(state) == f"arcface_{name}"


def test_irse50_layout_matches_psp_backbone():
    with torch.device("meta"):
        net = IRSEBackbone()
    state = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert state["output_layer.3.weight"] == (512, 512 * 7 * 7)
    assert state["output_layer.4.weight"] == (512,)  # affine BatchNorm1d
    assert state["body.23.res_layer.5.fc2.weight"] == (512, 32, 1, 1)
    assert len({k.split(".")[1] for k in state if k.startswith("body.")}) == 24
    assert detect_kind(net.state_dict()) == "irse50"


def test_psp_crop_matches_psp_id_loss_at_256():
    x = _faces(2, 256)
    expected = F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], 112)
    from fstrain.models.identity import IRSE_CROP
    torch.testing.assert_close(_crop_and_resize(x, IRSE_CROP, 112), expected, rtol=0, atol=0)
    top, bottom, left, right = ARCFACE_CROP  # FFHQ template mapped onto arcface_dst: a centred face box
    assert 0.1 < top < 0.13 and 0.86 < bottom < 0.88 and 0.12 < left < 0.13 and 0.87 < right < 0.88


def test_identity_loss_zero_for_same_image_and_grows_with_perturbation():
    encoder = IdentityEncoder(tiny_arcface(32, seed=3), "arcface").eval()
    x = _faces(4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        emb = encoder(x)
        losses = [identity_loss(emb, encoder((x + s * noise).clamp(-1, 1))).item() for s in (0.05, 0.3, 1.0)]
    assert emb.shape == (4, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert identity_loss(emb, emb).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < losses[0] < losses[1] < losses[2], losses


def test_identity_loss_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert identity_loss(a, torch.tensor([[0.0, 3.0], [0.0, -1.0]])).item() == pytest.approx(1.5)  # (1 + 2) / 2
    assert identity_loss(a, a * 5).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert identity_loss(a, b).item() == pytest.approx(1 - 1 / math.sqrt(2))


@pytest.mark.parametrize("make,kind", [(lambda: tiny_arcface(32, seed=5), "arcface"), (_tiny_irse, "irse50")])
def test_raw_state_dict_round_trip_autodetects_kind(make, kind, tmp_path):
    net = make().eval()
    encoder = IdentityEncoder(net, kind).eval()
    uri = str(tmp_path / "id.pth")
    save_identity(uri, encoder)
    raw = load_torch(uri)
    assert set(raw) == set(net.state_dict())  # the original raw layout, no wrapper keys
    loaded = load_identity(uri)
    assert loaded.kind == kind and loaded.input_size == 32 and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    x = _faces(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)


def test_legacy_file_without_num_batches_tracked_loads(tmp_path):
    net = tiny_arcface(32)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_torch(state, tmp_path / "old.pth")
    assert load_identity(str(tmp_path / "old.pth")).kind == "arcface"


def test_missing_or_mismatched_weights_name_the_key(tmp_path):
    state = tiny_arcface(32).state_dict()
    bad = dict(state)
    del bad["layer2.0.bn2.running_var"]
    save_torch(bad, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing key 'layer2\.0\.bn2\.running_var'"):
        load_identity(str(tmp_path / "missing.pth"))

    bad = dict(state)
    bad["prelu.weight"] = torch.zeros(3)
    save_torch(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsMismatchError, match=r"prelu\.weight"):
        load_identity(str(tmp_path / "shape.pth"))

    save_torch(state, tmp_path / "tiny.pth")
    with pytest.raises(WeightsMismatchError, match="arcface_r50"):
        load_identity(str(tmp_path / "tiny.pth"), kind="arcface_r50")

    save_torch({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="neither arcface_torch"):
        load_identity(str(tmp_path / "other.pth"))
