"""fstrain.metrics: Fréchet distance against closed forms in float64, streaming statistics, the Inception
feature extractor (both weight layouts, strict loading, named errors) and the two distances of the paper."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from fstrain.metrics import (FeatureExtractor, FeatureStatistics, extract_features, frechet_distance,
                             frechet_distance_between, load_inception, load_statistics, quantize_8bit,
                             semantic_distance, stylization_distance)
from fstrain.metrics.features import InceptionFeatures, build_inception, detect_layout
from fstrain.models.checkpoints import load_generator
from fstrain.models.identity import load_identity
from fstrain.models.perceptual import load_lpips
from fstrain.models.registry import MissingWeightsError, WeightsMismatchError

# ---------------------------------------------------------------- Fréchet distance


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    dim = 16
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    a, b = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # Same spectra in a common rotated basis (commuting covariances): the same closed form holds.
    q = random_rotation(dim, rng)
    rotated = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_float64_sqrtm_reference_for_full_covariances():
    rng = np.random.default_rng(1)
    dim = 12
    x, y = rng.normal(size=(dim, 3 * dim)), rng.normal(size=(dim, 3 * dim))
    s1, s2 = x @ x.T / dim, y @ y.T / dim + 0.5 * np.eye(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    reference = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-9)
    # Symmetric in its arguments, and only the mean term for equal covariances.
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s1) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)


def test_frechet_distance_is_zero_for_identical_sets_and_mean_shift_for_translated_ones():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(200, 32)) * 3 + 10
    same = FeatureStatistics(32).update(features)
    assert frechet_distance_between(same, same) == 0.0
    shuffled = FeatureStatistics(32)
    for chunk in np.array_split(rng.permutation(features), 7):   # other order, other batching
        shuffled.update(chunk)
    assert abs(frechet_distance_between(same, shuffled)) < 1e-9
    shift = rng.normal(size=32)
    moved = FeatureStatistics(32).update(features + shift)
    assert frechet_distance_between(same, moved) == pytest.approx(np.sum(shift ** 2), rel=1e-8)
    # Rank-deficient covariances (fewer samples than dimensions, as in tiny runs) stay finite and >= 0.
    few = FeatureStatistics(32).update(features[:5])
    assert np.isfinite(frechet_distance_between(few, same)) and frechet_distance_between(few, same) > 0


def test_streaming_statistics_equal_batch_numpy_in_float64_even_with_large_means():
    rng = np.random.default_rng(3)
    features = (rng.normal(size=(300, 8)) + 1e4).astype(np.float32)   # positive, large mean like pool3
    stats = FeatureStatistics(8)
    for chunk in np.array_split(features, 11):
        stats.update(torch.from_numpy(chunk))
    reference = features.astype(np.float64)
    np.testing.assert_allclose(stats.mean(), reference.mean(0), rtol=1e-13)
    np.testing.assert_allclose(stats.covariance(), np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12)
    assert stats.count == 300
    left, right = FeatureStatistics(8).update(features[:120]), FeatureStatistics(8).update(features[120:] - 5e3)
    right.shift += 5e3   # same samples, accumulated around another shift
    merged = left.merge(right)
    np.testing.assert_allclose(merged.covariance(), np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(merged.mean(), reference.mean(0), rtol=1e-13)
    mu, sigma, count = load_statistics(stats.to_bytes())
    assert count == 300 and np.array_equal(mu, stats.mean()) and np.array_equal(sigma, stats.covariance())


def test_small_sets_take_the_exact_low_rank_route_and_agree_with_the_dense_formula():
    rng = np.random.default_rng(4)
    dim = 48
    small = FeatureStatistics(dim).update(rng.normal(size=(9, dim)) * 2 + 1)
    other_small = FeatureStatistics(dim).update(rng.normal(size=(20, dim)))
    large = FeatureStatistics(dim)
    for chunk in np.array_split(rng.normal(size=(150, dim)) + 0.5, 4):
        large.update(chunk)
    assert small.factor() is not None and large.factor() is None
    np.testing.assert_allclose(small.factor().T @ small.factor(), small.covariance(), rtol=1e-10, atol=1e-12)
    for a, b in ((small, other_small), (small, large), (large, small)):
        dense = frechet_distance(a.mean(), a.covariance(), b.mean(), b.covariance())
        assert frechet_distance_between(a, b) == pytest.approx(dense, rel=1e-6)
    # Known answers: identical -> 0, translated -> |shift|^2 (the dense route only reaches these to ~sqrt(eps)).
    assert abs(frechet_distance_between(small, small)) < 1e-10
    shift = rng.normal(size=dim)
    moved = FeatureStatistics(dim).update(np.concatenate(small.samples) + shift)
    assert frechet_distance_between(small, moved) == pytest.approx(np.sum(shift ** 2), rel=1e-10)
    # Merging keeps the shortcut while the union is small, and drops it beyond `dim` samples.
    merged = FeatureStatistics(dim).merge(small).merge(other_small)
    assert merged.count == 29 and merged.factor() is not None
    np.testing.assert_allclose(merged.covariance(), merged.factor().T @ merged.factor(), rtol=1e-9, atol=1e-12)
    assert merged.merge(large).factor() is None


def test_frechet_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"sigma2 \(3, 3\)"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="mu1 has non-finite"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStatistics(4).update(np.ones((1, 4))).covariance()
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        FeatureStatistics(4).update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="NaN or inf"):
        FeatureStatistics(2).update(np.array([[np.inf, 1.0]]))


# ---------------------------------------------------------------- feature extractors


class TinyRandomExtractor(nn.Module):
    """A test-only, explicitly random feature extractor: shows that any FeatureExtractor plugs in."""
    name, dim, random_init = "tiny-random-conv (test only)", 6, True

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, images):
        return self.conv(images).mean((2, 3))


def test_any_extractor_plugs_in_and_sees_8bit_quantised_images():
    extractor = TinyRandomExtractor()
    assert isinstance(extractor, FeatureExtractor)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    nudged = (quantize_8bit(images) + 0.3 / 127.5).clamp(-1, 1)   # under half an 8-bit level away
    a, b = extract_features(extractor, images), extract_features(extractor, nudged)
    assert a.dtype == torch.float64 and a.shape == (4, 6)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    stats = FeatureStatistics(extractor.dim).update(a)
    assert abs(frechet_distance_between(stats, stats)) < 1e-10


@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory) -> str:
    """Written by the CLI (`python -m fstrain.metrics random-inception`), which is the function below it."""
    from fstrain.metrics.__main__ import main
    path = str(tmp_path_factory.mktemp("inception") / "inception_RANDOM.pth")
    assert main(["random-inception", path, "--seed", "0"]) == 0
    with open(path + ".json") as f:
        assert json.load(f)["random_init"] is True
    return path


def test_random_inception_weights_load_marked_random_and_give_finite_pool3_features(random_inception_file):
    extractor = load_inception(random_inception_file, input_size=75)
    assert extractor.random_init and "RANDOM" in extractor.name and extractor.layout == "torchvision"
    assert isinstance(extractor, FeatureExtractor) and extractor.dim == 2048
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    features = extract_features(extractor, images)
    assert features.shape == (3, 2048) and torch.isfinite(features).all()
    assert 1e-3 < features.abs().mean() < 1e4          # BN calibration: a usable scale
    torch.testing.assert_close(features, extract_features(load_inception(random_inception_file, input_size=75),
                                                          images))
    # Other images give other features (the extractor is not constant).
    assert (features - extract_features(extractor, -images)).abs().max() > 1e-3


def test_pytorch_fid_layout_is_detected_and_pools_like_the_tf_graph(random_inception_file, tmp_path):
    state = torch.load(random_inception_file, weights_only=True)
    fid_state = dict(state)
    fid_state["fc.weight"] = torch.randn(1008, 2048) * 0.01
    fid_state["fc.bias"] = torch.zeros(1008)
    path = str(tmp_path / "pt_inception.pth")
    torch.save(fid_state, path)
    assert detect_layout(fid_state, path) == "pytorch-fid"
    fid = load_inception(path, input_size=75)
    assert fid.layout == "pytorch-fid" and not fid.random_init   # no sidecar: the loader cannot know
    # Same conv weights through torchvision's pooling give different features: the TF pooling is active.
    net = build_inception("torchvision")
    net.load_state_dict(state)
    torchvision_view = InceptionFeatures(net, "torchvision", 75)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert (fid(images) - torchvision_view(images)).abs().max() > 1e-4
    with pytest.raises(WeightsMismatchError, match="inception_layout is 'torchvision'.*'pytorch-fid' layout"):
        load_inception(path, layout="torchvision")


def test_inception_loading_errors_name_the_config_key_file_and_keys(random_inception_file, tmp_path):
    with pytest.raises(MissingWeightsError, match="evaluate.inception_weights is empty"):
        load_inception("")
    missing = str(tmp_path / "nowhere" / "inception.pth")
    with pytest.raises(MissingWeightsError, match=r"evaluate.inception_weights = .*nowhere.*inception_v3\("):
        load_inception(missing)
    state = torch.load(random_inception_file, weights_only=True)
    broken = {k: v for k, v in state.items() if k != "Mixed_6c.branch1x1.conv.weight"}
    path = str(tmp_path / "broken.pth")
    torch.save(broken, path)
    with pytest.raises(WeightsMismatchError, match="missing key 'Mixed_6c.branch1x1.conv.weight'"):
        load_inception(path)
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsMismatchError, match="not an Inception-v3 state dict"):
        load_inception(path)
    with pytest.raises(ValueError, match="at least 75"):
        load_inception(random_inception_file, input_size=32)


# ---------------------------------------------------------------- distances


@pytest.fixture(scope="module")
def nets(tiny_models):
    g = load_generator(tiny_models.generator, load_discriminator=False).generator
    lpips = load_lpips(tiny_models.lpips_backbone, net=tiny_models.lpips_net)
    identity = load_identity(tiny_models.identity, tiny_models.identity_kind)
    return g, lpips, identity


def perturbed(g: nn.Module, amount: float) -> nn.Module:
    other = copy.deepcopy(g)
    with torch.no_grad():
        weight = other.convs[0].conv.weight
        weight.add_(amount * torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)))
    return other


def test_semantic_distance_is_zero_for_the_same_generator_and_grows_with_change(nets):
    g, lpips, identity = nets
    same = semantic_distance(g, copy.deepcopy(g), lpips, identity, lambda_id=0.5, num_samples=6, batch_size=4)
    assert same.lpips == 0.0 and abs(same.identity) < 1e-6 and same.num_samples == 6
    small = semantic_distance(g, perturbed(g, 0.3), lpips, identity, lambda_id=0.5, num_samples=6, batch_size=4)
    large = semantic_distance(g, perturbed(g, 3.0), lpips, identity, lambda_id=0.5, num_samples=6, batch_size=4)
    assert 0 < small.lpips < large.lpips
    assert large.total == pytest.approx(large.lpips + 0.5 * large.identity, rel=1e-12)
    # Fixed codes and per-sample noise: the batch size does not change the value.
    rebatched = semantic_distance(g, perturbed(g, 3.0), lpips, identity, lambda_id=0.5, num_samples=6, batch_size=5)
    assert rebatched.total == pytest.approx(large.total, rel=1e-4)
    # lambda_id = 0 drops the identity term (and the identity net is not needed).
    lpips_only = semantic_distance(g, perturbed(g, 3.0), lpips, None, lambda_id=0.0, num_samples=6, batch_size=4)
    assert lpips_only.total == pytest.approx(large.lpips, rel=1e-6) and lpips_only.identity == 0.0


def test_stylization_distance_is_lpips_between_input_and_output(nets):
    _, lpips, _ = nets
    rng = torch.Generator().manual_seed(0)
    photos = [torch.rand(3, 3, 32, 32, generator=rng) * 2 - 1, torch.rand(2, 3, 32, 32, generator=rng) * 2 - 1]
    unchanged, count = stylization_distance(photos, lambda x: x.clone(), lpips)
    assert unchanged == 0.0 and count == 5
    flipped, _ = stylization_distance(photos, lambda x: x.flip(-1), lpips)
    inverted, _ = stylization_distance(photos, lambda x: -x, lpips)

    def by_hand(stylize) -> float:
        """LPIPS photo by photo, each upsampled to 64 px as the metric's documented resize does, then averaged."""
        values = []
        for photo in torch.cat(photos).split(1):
            up = lambda t: F.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False)  # noqa: E731
            with torch.no_grad():
                values.append(float(lpips(up(photo), up(stylize(photo)))))
        return sum(values) / len(values)

    assert flipped == pytest.approx(by_hand(lambda x: x.flip(-1)), rel=1e-5)
    assert inverted == pytest.approx(by_hand(lambda x: -x), rel=1e-5)
    assert 0 < flipped and 0 < inverted
