"""Feature extractors for FID: a small protocol, and Inception-v3 pool3 features from a configured weights file.

Any object with `name`, `dim`, `random_init` and `__call__(images) -> (N, dim)` (images NCHW in [-1, 1]) is a
`FeatureExtractor`; the evaluation only sees that protocol, so another backbone (CLIP, DINO, ...) plugs in.

`InceptionFeatures` is torchvision's `Inception3` architecture read up to the global average pool after
`Mixed_7c` (2048-d "pool3"), with the input resized to 299 x 299 (bilinear, as pytorch-fid does). Two weight
layouts load strictly (`torch.load(weights_only=True)`), detected from the keys or named explicitly:

- "torchvision": `torch.save(torchvision.models.inception_v3(weights="IMAGENET1K_V1").state_dict(), path)`
  (1000 classes, `AuxLogits.*` optional). Those weights expect ImageNet-normalised input and map it back to
  [-1, 1] inside (`transform_input`), so feeding [-1, 1] images straight to `Conv2d_1a_3x3` is the same thing.
- "pytorch-fid": `pt_inception-2015-12-05-6726825d.pth`, the TF FID graph ported by pytorch-fid (1008 classes,
  no `AuxLogits`). That graph pools differently: the average pools of the A, C and first E blocks exclude the
  zero padding from the average, and the last E block max-pools its pool branch. Input is [-1, 1] too.

A third layout loads through the same config key: an image-reader state dict (`fstrain.models.reader`, keys
`trunk.N.*`, e.g. the synthetic world's evaluation feature net `eval_features.pth`); its pooled trunk features
replace pool3 and its own input size replaces 299.

Weights never come from a download and never default to random: a missing file raises `MissingWeightsError`
naming the config key. `save_random_inception_weights` writes an explicitly RANDOM file (with a `.json`
sidecar saying so) for tests and demos; the loader reports `random_init=True` for it and the evaluation says
so next to every FID it prints.
"""
from __future__ import annotations

from typing import Callable, Mapping, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from fstrain.models.reader import READER_KEY, ReaderFeatures, build_reader
from fstrain.models.registry import MissingWeightsError, WeightsMismatchError, check_state_dict, load_torch, \
    save_json, save_torch

LAYOUTS = ("torchvision", "pytorch-fid")
FID_CLASSES = 1008            # the TF graph's classifier width: how a pytorch-fid file is recognised
TORCHVISION_CLASSES = 1000
INCEPTION_SIZE = 299
MIN_INCEPTION_SIZE = 75       # smallest input the stride-2 stages can take (torchvision documents 75)
CONFIG_KEY = "evaluate.inception_weights"
HOW_TO_GET_INCEPTION = (
    "Create it once on a machine with internet access: python -c \"import torch, torchvision; "
    "torch.save(torchvision.models.inception_v3(weights='IMAGENET1K_V1').state_dict(), 'inception_v3.pth')\" "
    "(or use pytorch-fid's pt_inception-2015-12-05-6726825d.pth), copy it to storage and set "
    f"{CONFIG_KEY} to its path/URI. For tests only, `python -m fstrain.metrics random-inception OUT` writes "
    "RANDOM weights (not a real FID).")


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images (N, 3, H, W) in [-1, 1] -> features (N, dim). `random_init` marks features that mean nothing."""
    name: str
    dim: int
    random_init: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels a PNG stores, so generated and stored images take the same path."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
    """Features of 8-bit-quantised images as float64 on the CPU (FID statistics are accumulated in float64)."""
    features = extractor(quantize_8bit(images.float()))
    if features.ndim != 2 or features.shape != (images.shape[0], extractor.dim):
        raise ValueError(f"feature extractor '{extractor.name}' returned shape {tuple(features.shape)}; "
                         f"expected ({images.shape[0]}, {extractor.dim})")
    return features.detach().to("cpu", torch.float64)


# ---------------------------------------------------------------- Inception-v3


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3/1 SAME average pool: padded zeros do not count in the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _tf_max_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _block_a(b: nn.Module, x: torch.Tensor, pool: Callable) -> torch.Tensor:
    return torch.cat([b.branch1x1(x), b.branch5x5_2(b.branch5x5_1(x)),
                      b.branch3x3dbl_3(b.branch3x3dbl_2(b.branch3x3dbl_1(x))), b.branch_pool(pool(x))], 1)


def _block_c(b: nn.Module, x: torch.Tensor, pool: Callable) -> torch.Tensor:
    b7 = b.branch7x7_3(b.branch7x7_2(b.branch7x7_1(x)))
    dbl = x
    for layer in (b.branch7x7dbl_1, b.branch7x7dbl_2, b.branch7x7dbl_3, b.branch7x7dbl_4, b.branch7x7dbl_5):
        dbl = layer(dbl)
    return torch.cat([b.branch1x1(x), b7, dbl, b.branch_pool(pool(x))], 1)


def _block_e(b: nn.Module, x: torch.Tensor, pool: Callable) -> torch.Tensor:
    b3 = b.branch3x3_1(x)
    b3 = torch.cat([b.branch3x3_2a(b3), b.branch3x3_2b(b3)], 1)
    dbl = b.branch3x3dbl_2(b.branch3x3dbl_1(x))
    dbl = torch.cat([b.branch3x3dbl_3a(dbl), b.branch3x3dbl_3b(dbl)], 1)
    return torch.cat([b.branch1x1(x), b3, dbl, b.branch_pool(pool(x))], 1)


# Blocks the TF FID graph computes differently from torchvision: (name, forward, pool of the pool branch).
FID_GRAPH_BLOCKS = {
    "Mixed_5b": (_block_a, _tf_avg_pool), "Mixed_5c": (_block_a, _tf_avg_pool), "Mixed_5d": (_block_a, _tf_avg_pool),
    "Mixed_6b": (_block_c, _tf_avg_pool), "Mixed_6c": (_block_c, _tf_avg_pool), "Mixed_6d": (_block_c, _tf_avg_pool),
    "Mixed_6e": (_block_c, _tf_avg_pool), "Mixed_7b": (_block_e, _tf_avg_pool), "Mixed_7c": (_block_e, _tf_max_pool),
}
MIXED_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                "Mixed_7a", "Mixed_7b", "Mixed_7c")


def build_inception(layout: str, aux_logits: bool = False) -> nn.Module:
    """torchvision's Inception3 with the classifier width of `layout` (weights uninitialised: load them)."""
    import torchvision
    if layout not in LAYOUTS:
        raise ValueError(f"Inception layout must be one of {LAYOUTS}; got {layout!r}")
    classes = FID_CLASSES if layout == "pytorch-fid" else TORCHVISION_CLASSES
    return torchvision.models.Inception3(num_classes=classes, aux_logits=aux_logits, transform_input=False,
                                         init_weights=False)


class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 (2048-d) features of images in [-1, 1]; input resized to `input_size` (299)."""

    dim = 2048

    def __init__(self, net: nn.Module, layout: str, input_size: int = INCEPTION_SIZE, random_init: bool = False,
                 source: str = ""):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"Inception layout must be one of {LAYOUTS}; got {layout!r}")
        if input_size < MIN_INCEPTION_SIZE:
            raise ValueError(f"Inception input size must be at least {MIN_INCEPTION_SIZE}; got {input_size}")
        self.net = net.eval().requires_grad_(False)
        self.layout = layout
        self.input_size = input_size
        self.random_init = random_init
        self.source = source
        self.name = f"inception-v3-pool3 ({layout}{', RANDOM weights' if random_init else ''}, {input_size}px)"

    def _mixed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        block = getattr(self.net, name)
        if self.layout == "pytorch-fid" and name in FID_GRAPH_BLOCKS:
            forward, pool = FID_GRAPH_BLOCKS[name]
            return forward(block, x, pool)
        return block(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects RGB images (N, 3, H, W) in [-1, 1]; got {tuple(images.shape)}")
        net = self.net
        x = images.to(net.Conv2d_1a_3x3.conv.weight.dtype)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in MIXED_BLOCKS:
            x = self._mixed(name, x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def detect_layout(state: Mapping[str, torch.Tensor], uri: str) -> str:
    """'pytorch-fid' (fc 1008 wide, no AuxLogits) or 'torchvision' (fc 1000 wide); otherwise a named error."""
    fc = state.get("fc.weight")
    if fc is None or "Conv2d_1a_3x3.conv.weight" not in state:
        raise WeightsMismatchError(f"{uri}: not an Inception-v3 state dict (no 'Conv2d_1a_3x3.conv.weight' / "
                                   f"'fc.weight' keys; found e.g. {list(state)[:4]})")
    classes = int(fc.shape[0])
    if classes == FID_CLASSES:
        return "pytorch-fid"
    if classes == TORCHVISION_CLASSES:
        return "torchvision"
    raise WeightsMismatchError(f"{uri}: 'fc.weight' has {classes} classes; torchvision's Inception has "
                               f"{TORCHVISION_CLASSES}, pytorch-fid's FID Inception {FID_CLASSES}")


def _read_sidecar(uri: str) -> dict:
    from fstrain.data import storage
    sidecar = f"{uri}.json"
    try:
        return storage.read_json(sidecar) if storage.exists(sidecar) else {}
    except (storage.StorageError, ValueError):
        return {}


def load_inception(uri: str | None, *, layout: str = "auto", input_size: int = INCEPTION_SIZE,
                   sha256: str | None = None, config_key: str = CONFIG_KEY,
                   device: str | torch.device = "cpu") -> nn.Module:
    """`InceptionFeatures` from a weights file (local path or s3:// URI); strict keys, weights_only load.
    An image-reader file gives `ReaderFeatures` instead (layout / input_size do not apply to it)."""
    if not uri:
        raise MissingWeightsError(f"{config_key} is empty: FID needs Inception-v3 weights. " + HOW_TO_GET_INCEPTION)
    try:
        state = load_torch(uri, sha256)
    except MissingWeightsError as exc:
        raise MissingWeightsError(f"{config_key} = {uri}: Inception-v3 weights not found. "
                                  + HOW_TO_GET_INCEPTION) from exc
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"{uri}: expected an Inception-v3 state dict, got {type(state).__name__}")
    if READER_KEY in state:
        return _reader_features(state, uri, device)
    detected = detect_layout(state, uri)
    if layout not in ("auto", detected):
        raise WeightsMismatchError(f"{uri}: {config_key.rsplit('.', 1)[0]}.inception_layout is '{layout}' but the "
                                   f"file has the '{detected}' layout (fc has {state['fc.weight'].shape[0]} classes)")
    has_aux = any(k.startswith("AuxLogits.") for k in state)
    if has_aux and detected == "pytorch-fid":
        raise WeightsMismatchError(f"{uri}: pytorch-fid's Inception has no 'AuxLogits.*' keys, this file does")
    net = build_inception(detected, aux_logits=has_aux)
    check_state_dict(net, dict(state), uri, f"Inception-v3 ({detected} layout)")
    random_init = bool(_read_sidecar(uri).get("random_init", False))
    return InceptionFeatures(net, detected, input_size, random_init=random_init, source=uri).to(device)


def _reader_features(state: Mapping[str, torch.Tensor], uri: str, device: str | torch.device) -> nn.Module:
    """An image reader's pooled features (`fstrain.models.reader`), loaded strictly like the Inception layouts."""
    reader = build_reader(state, uri)
    check_state_dict(reader, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, uri,
                     "image reader (FID features)")
    random_init = bool(_read_sidecar(uri).get("random_init", False))
    return ReaderFeatures(reader, random_init=random_init, source=uri).to(device)


# ---------------------------------------------------------------- RANDOM weights for tests and demos


@torch.no_grad()
def random_inception_state(layout: str = "torchvision", seed: int = 0,
                           calibration_size: int = MIN_INCEPTION_SIZE) -> dict[str, torch.Tensor]:
    """A RANDOM Inception-v3 state dict whose BatchNorm statistics are re-estimated on seeded noise images.

    PyTorch's default init leaves pool3 features ~1e-8 (or ~1e10 with torchvision's init): useless even as a
    smoke test. One pass in train mode with cumulative BN averages normalises every layer on the calibration
    images, so features of ordinary images come out at a sane scale.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_inception(layout)       # PyTorch's default layer init, drawn from `seed`
        calibration = torch.rand(16, 3, calibration_size, calibration_size) * 2 - 1
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    extractor = InceptionFeatures(net, layout, calibration_size)
    net.train()
    extractor.forward(calibration)   # BN layers record the batch statistics layer by layer
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def save_random_inception_weights(uri: str, layout: str = "torchvision", seed: int = 0) -> dict:
    """Write RANDOM Inception-v3 weights (tests/demos only) plus a `<uri>.json` sidecar marking them random."""
    save_torch(random_inception_state(layout, seed), uri)
    metadata = {"format": f"inception-v3-{layout}", "layout": layout, "random_init": True, "seed": seed,
                "warning": "RANDOM weights: FID computed with them is not a real FID (tests and demos only)"}
    save_json(metadata, f"{uri}.json")
    return metadata
