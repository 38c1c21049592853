"""LPIPS loader: torchvision-format trunk from a configured file, packaged linear layers, loud errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fstrain.models.perceptual import (_packaged_linear_weights, load_lpips, random_backbone_state,
                                       save_random_backbone_weights, trunk_key_map)
from fstrain.models.registry import MissingWeightsError, WeightsMismatchError, load_torch, save_torch


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lpips") / "alexnet_RANDOM.pth"
    save_random_backbone_weights(path, "alex", seed=7)
    return str(path)


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_missing_backbone_is_a_clear_error_not_a_download(tmp_path):
    uri = str(tmp_path / "vgg16.pth")
    with pytest.raises(MissingWeightsError) as info:
        load_lpips(uri, net="vgg")
    message = str(info.value)
    assert uri in message and "torchvision.models.vgg16(weights='IMAGENET1K_V1')" in message
    with pytest.raises(MissingWeightsError, match="none are configured"):
        load_lpips(None, net="alex")
    with pytest.raises(ValueError, match="vgg"):
        load_lpips(uri, net="squeeze")


def test_random_backbone_sidecar_says_random(alex_file):
    meta = json.loads(Path(alex_file + ".json").read_text())
    assert meta["random_init"] is True and meta["net"] == "alex" and "RANDOM" in meta["warning"]
    assert all(k.startswith("features.") for k in load_torch(alex_file))


def test_trunk_and_linear_layers_come_from_the_files(alex_file):
    model = load_lpips(alex_file, net="alex")
    trunk = load_torch(alex_file)
    for lpips_key, tv_key in trunk_key_map(model).items():
        assert torch.equal(model.state_dict()[lpips_key], trunk[tv_key]), lpips_key
    packaged = load_torch(_packaged_linear_weights("alex"))
    for key, value in packaged.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert not model.training and all(not p.requires_grad for p in model.parameters())


def test_distance_is_zero_for_identical_and_grows_with_noise(alex_file):
    model = load_lpips(alex_file, net="alex")
    x = _images()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        same = model(x, x).flatten()
        small = model(x, (x + 0.05 * noise).clamp(-1, 1)).flatten()
        large = model(x, (x + 0.5 * noise).clamp(-1, 1)).flatten()
    assert same.shape == (2,) and torch.all(same.abs() < 1e-6)
    assert torch.all(small > 0) and torch.all(large > small)


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips passes torchvision's deprecated pretrained=False
def test_vgg_key_map_covers_torchvision_conv_layers():
    import lpips

    model = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    mapping = trunk_key_map(model)
    indices = sorted({int(v.split(".")[1]) for v in mapping.values()})
    assert indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # vgg16.features conv layers
    assert set(mapping.values()) == set(random_backbone_state("vgg"))


def test_wrong_or_damaged_backbone_names_the_keys(alex_file, tmp_path):
    with pytest.raises(WeightsMismatchError, match="unexpected keys for a torchvision vgg16"):
        load_lpips(alex_file, net="vgg")
    state = load_torch(alex_file)
    del state["features.8.bias"]
    save_torch(state, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing key 'slice4\.8\.bias'"):
        load_lpips(str(tmp_path / "missing.pth"), net="alex")
    state = load_torch(alex_file)
    state["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    save_torch(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsMismatchError, match=r"slice1\.0\.weight"):
        load_lpips(str(tmp_path / "shape.pth"), net="alex")
    # A full torchvision file (with the classifier LPIPS does not use) is accepted.
    full = {**load_torch(alex_file), "classifier.1.weight": torch.zeros(4096, 9216)}
    save_torch(full, tmp_path / "full.pth")
    load_lpips(str(tmp_path / "full.pth"), net="alex")
