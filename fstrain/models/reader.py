"""A small image reader network: a conv trunk whose pooled features serve as FID features (the Inception role) and
whose linear heads read attributes off an image (the attribute-reader role).

State-dict layout (raw tensors, `torch.save(net.state_dict())`):
    trunk.<i>.{weight,bias,running_mean,running_var,num_batches_tracked}   conv / BatchNorm pairs
    heads.<name>.{weight,bias}                                            one Linear per head
    input_size                                                            int64 scalar: side images are resized to
Widths, depth and heads are read back off the shapes, so any size loads strictly. Images are (N, 3, H, W) in
[-1, 1]; each stage halves the resolution (conv3x3 stride 2 + conv3x3), features are the global average pool of
the last stage (`dim` = its width).
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fstrain.models.registry import WeightsMismatchError, check_state_dict, load_torch, save_torch

READER_KEY = "trunk.0.weight"   # how a reader state dict is recognised


def _stage(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class ImageReader(nn.Module):
    """Conv trunk (stages of `widths`) -> pooled features -> named linear heads of the given widths."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), heads: Mapping[str, int] | None = None,
                 input_size: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += _stage(in_ch, width)
            in_ch = width
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(in_ch, n) for name, n in (heads or {}).items()})
        self.register_buffer("input_size", torch.tensor(int(input_size)))
        self.dim = in_ch
        self.widths = tuple(widths)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        size = int(self.input_size)
        x = images.to(self.trunk[0].weight.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(images)
        return {name: head(feats) for name, head in self.heads.items()}


def build_reader(state: Mapping[str, torch.Tensor], uri: str = "<state dict>") -> ImageReader:
    """The ImageReader whose shapes fit `state`."""
    convs = sorted((int(m.group(1)), v) for k, v in state.items()
                   if (m := re.match(r"trunk\.(\d+)\.weight$", k)) and v.ndim == 4)
    if not convs or "input_size" not in state:
        raise WeightsMismatchError(f"{uri}: not an image-reader state dict (needs 'trunk.N.weight' convs and "
                                   f"'input_size'; found e.g. {list(state)[:4]})")
    widths = [int(v.shape[0]) for _, v in convs[::2]]     # two convs per stage
    heads = {m.group(1): int(v.shape[0]) for k, v in state.items() if (m := re.match(r"heads\.(\w+)\.weight$", k))}
    return ImageReader(widths, heads, int(state["input_size"]))


def load_reader(uri: str, sha256: str | None = None, device: str | torch.device = "cpu") -> ImageReader:
    """A frozen, eval-mode ImageReader from a raw state dict (weights_only load, strict keys)."""
    state = load_torch(uri, sha256)
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"{uri}: expected an image-reader state dict, got {type(state).__name__}")
    net = build_reader(state, uri)
    check_state_dict(net, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, uri,
                     "image reader")
    return net.to(device).eval().requires_grad_(False)


def save_reader(uri: str, net: ImageReader, half: bool = False) -> str:
    state = {k: (v.half() if half and v.is_floating_point() and not k.endswith(("running_var", "running_mean"))
                 else v).detach().cpu().contiguous() for k, v in net.state_dict().items()}
    return save_torch(state, uri)


class ReaderFeatures(nn.Module):
    """The fstrain.metrics FeatureExtractor protocol over an ImageReader's pooled features."""

    def __init__(self, reader: ImageReader, random_init: bool = False, source: str = ""):
        super().__init__()
        self.reader = reader.eval().requires_grad_(False)
        self.dim = reader.dim
        self.random_init = random_init
        self.source = source
        self.input_size = int(reader.input_size)
        self.name = (f"world image reader pool ({reader.dim}-d{', RANDOM weights' if random_init else ''}, "
                     f"{self.input_size}px)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ReaderFeatures expects RGB images (N, 3, H, W) in [-1, 1]; got {tuple(images.shape)}")
        return self.reader.features(images).float()
