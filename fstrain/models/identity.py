"""Face-identity networks for the ID loss, in the layouts their public weights use.

- `IResNet`: insightface arcface_torch's IResNet (r18/r34/r50/r100; `backbone.pth` is its raw state dict).
- `IRSEBackbone`: pSp's IR-SE50 `Backbone(112, 50, 'ir_se')` (`model_ir_se50.pth`: `input_layer`, `body`,
  `output_layer` keys). Its residual units (`bottleneck_ir`) also form the body of the pSp encoders.
- `IdentityEncoder`: wraps either, takes generator images in [-1, 1] (FFHQ-aligned, any size), applies the
  crop the net was trained on, resizes to its input size (112 for real weights) and returns unit embeddings.
- `identity_loss(a, b)` = mean(1 - cos(a, b)).

Both nets accept a smaller depth/width (`units`, `stage_channels`, `input_size`) for tiny test models; the key
pattern stays the same, and the architecture is read back off the weights' shapes when loading.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fstrain.models.registry import WeightsMismatchError, check_state_dict, load_torch, save_torch

ARCFACE_UNITS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
IRSE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
FULL_CHANNELS = (64, 128, 256, 512)
KINDS = ("arcface_r18", "arcface_r34", "arcface_r50", "arcface_r100", "arcface", "irse50")

# Crops as fractions of an FFHQ-aligned image: (top, bottom, left, right).
# pSp's ID loss crops x[:, :, 35:223, 32:220] of its 256 px output.
IRSE_CROP = (35 / 256, 223 / 256, 32 / 256, 220 / 256)
# arcface_torch expects faces aligned to `arcface_dst` in 112 px. The least-squares scale+shift that maps the
# FFHQ-512 5-point template onto arcface_dst puts the 112 px window at these fractions of the aligned image.
FFHQ_5PT_512 = ((192.98, 239.95), (318.90, 240.19), (256.63, 314.02), (201.26, 371.41), (313.09, 371.15))
ARCFACE_DST_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                   (70.7299, 92.2041))


def _template_crop(src: Sequence[Sequence[float]], src_size: float, dst: Sequence[Sequence[float]],
                   dst_size: float) -> tuple[float, float, float, float]:
    p, q = torch.tensor(src, dtype=torch.float64), torch.tensor(dst, dtype=torch.float64)
    pc, qc = p - p.mean(0), q - q.mean(0)
    scale = (pc * qc).sum() / (pc ** 2).sum()
    shift = q.mean(0) - scale * p.mean(0)
    lo, hi = (-shift) / scale / src_size, (dst_size - shift) / scale / src_size  # (x, y) each
    return float(lo[1]), float(hi[1]), float(lo[0]), float(hi[0])


ARCFACE_CROP = _template_crop(FFHQ_5PT_512, 512, ARCFACE_DST_112, 112)


# ---------------------------------------------------------------- IR / IR-SE units (pSp helpers layout)


class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convs (`fc1`, `fc2`, no bias), reduction 16."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(channels // reduction, 1), 1, bias=False)
        self.fc2 = nn.Conv2d(max(channels // reduction, 1), channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class BottleneckIR(nn.Module):
    """pSp's bottleneck_IR / bottleneck_IR_SE: BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN [-> SE] + shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int, se: bool = True):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channel), nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth)]
        if se:
            layers.append(SEModule(depth))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def make_ir_body(units: Sequence[int], stage_channels: Sequence[int], se: bool = True) -> nn.Sequential:
    """The four stages of IR-SE units; the first unit of each stage halves the resolution."""
    modules, in_channel = [], stage_channels[0]
    for n_units, depth in zip(units, stage_channels):
        for i in range(n_units):
            modules.append(BottleneckIR(in_channel, depth, 2 if i == 0 else 1, se=se))
            in_channel = depth
    return nn.Sequential(*modules)


def infer_ir_body(state: Mapping[str, torch.Tensor], prefix: str, uri: str) -> dict:
    """Read units per stage, stage channels and IR vs IR-SE off `<prefix>N.res_layer.*` keys.

    A stage starts at unit 0 and wherever the channel count changes (stages must widen, as all real ones do).
    """
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.res_layer\.1\.weight$")
    convs = sorted((int(m.group(1)), v) for k, v in state.items() if (m := pattern.match(k)))
    if not convs or [i for i, _ in convs] != list(range(len(convs))):
        raise WeightsMismatchError(f"{uri}: no contiguous '{prefix}N.res_layer.1.weight' keys; not an IR-SE layout")
    units: list[int] = []
    channels: list[int] = []
    for _, weight in convs:
        depth = int(weight.shape[0])
        if not channels or depth != channels[-1]:
            channels.append(depth)
            units.append(0)
        units[-1] += 1
    if len(units) != 4:
        raise WeightsMismatchError(f"{uri}: found {len(units)} stages in '{prefix}*' (channels {channels}); "
                                   f"the IR-SE layout has 4")
    se = f"{prefix}0.res_layer.5.fc1.weight" in state
    return {"units": tuple(units), "stage_channels": tuple(channels), "se": se}


class IRSEBackbone(nn.Module):
    """pSp's IR-SE face-recognition Backbone (`model_ir_se50.pth`); returns L2-normalised embeddings."""

    def __init__(self, input_size: int = 112, units: Sequence[int] = IRSE_UNITS[50],
                 stage_channels: Sequence[int] = FULL_CHANNELS, se: bool = True, embedding_dim: int = 512,
                 drop_ratio: float = 0.4, affine: bool = True):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages); got {input_size}")
        self.input_size = input_size
        self.config = {"input_size": input_size, "units": tuple(units), "stage_channels": tuple(stage_channels),
                       "se": se, "embedding_dim": embedding_dim}
        c0, c_last = stage_channels[0], stage_channels[-1]
        self.input_layer = nn.Sequential(nn.Conv2d(3, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0), nn.PReLU(c0))
        self.body = make_ir_body(units, stage_channels, se)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(c_last), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(c_last * (input_size // 16) ** 2, embedding_dim),
                                          nn.BatchNorm1d(embedding_dim, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


# ---------------------------------------------------------------- arcface_torch IResNet


class IBasicBlock(nn.Module):
    """arcface_torch block: bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3, plus (downsampled) identity."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = self.downsample(x) if self.downsample is not None else x
        return out + identity


class IResNet(nn.Module):
    """insightface arcface_torch IResNet (`backbone.pth`): 112 px RGB in [-1, 1] -> (N, num_features)."""

    def __init__(self, layers: Sequence[int] = ARCFACE_UNITS["r50"], stage_channels: Sequence[int] = FULL_CHANNELS,
                 input_size: int = 112, num_features: int = 512, dropout: float = 0.0):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 (four stride-2 stages); got {input_size}")
        self.input_size = input_size
        self.config = {"layers": tuple(layers), "stage_channels": tuple(stage_channels), "input_size": input_size,
                       "num_features": num_features}
        self.inplanes = stage_channels[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(stage_channels[0], layers[0])
        self.layer2 = self._make_layer(stage_channels[1], layers[1])
        self.layer3 = self._make_layer(stage_channels[2], layers[2])
        self.layer4 = self._make_layer(stage_channels[3], layers[3])
        self.bn2 = nn.BatchNorm2d(stage_channels[3], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(stage_channels[3] * (input_size // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # arcface_torch freezes the embedding BN's scale

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        # Every stage starts with stride 2, so its first block always has a downsample branch.
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# ---------------------------------------------------------------- wrapper + loss


def _crop_and_resize(images: torch.Tensor, crop: tuple[float, float, float, float] | None, size: int) -> torch.Tensor:
    if crop is not None:
        h, w = images.shape[-2:]
        top, bottom, left, right = (round(crop[0] * h), round(crop[1] * h), round(crop[2] * w), round(crop[3] * w))
        images = images[:, :, top:bottom, left:right]
    if images.shape[-2] >= size and images.shape[-1] >= size:
        return F.adaptive_avg_pool2d(images, size)  # what pSp's ID loss uses (face_pool)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


class IdentityEncoder(nn.Module):
    """Generator images in [-1, 1] (FFHQ-aligned, any size) -> L2-normalised identity embeddings.

    `crop`: "auto" (the crop the backbone's weights expect), "none" (image is already a face crop), or an explicit
    (top, bottom, left, right) tuple of fractions.
    """

    def __init__(self, backbone: nn.Module, kind: str, crop: str | tuple[float, float, float, float] = "auto"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown identity kind '{kind}'; expected one of {KINDS}")
        self.backbone = backbone
        self.kind = kind
        self.input_size = backbone.input_size
        if crop == "auto":
            crop = IRSE_CROP if kind == "irse50" else ARCFACE_CROP
        self.crop = None if crop == "none" else tuple(crop)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"IdentityEncoder expects RGB images (N, 3, H, W) in [-1, 1]; got {tuple(images.shape)}")
        faces = _crop_and_resize(images, self.crop, self.input_size)
        return F.normalize(self.backbone(faces), dim=1)


def identity_loss(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(a, b)) over the batch: 0 for identical identities, up to 2 for opposite ones."""
    return (1 - F.cosine_similarity(emb_a, emb_b, dim=1)).mean()


# ---------------------------------------------------------------- load / save (raw state dicts)


def detect_kind(state: Mapping[str, torch.Tensor]) -> str:
    """'irse50' for pSp Backbone keys, 'arcface_rNN' for arcface_torch keys (by block count), else ValueError."""
    if "input_layer.0.weight" in state and "output_layer.3.weight" in state:
        return "irse50"
    if "conv1.weight" in state and "fc.weight" in state and "features.running_mean" in state:
        layers = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        for name, units in ARCFACE_UNITS.items():
            if units == layers:
                return f"arcface_{name}"
        return "arcface"  # a non-standard depth (e.g. tiny test models)
    raise ValueError("keys match neither arcface_torch IResNet (conv1/layer1..4/fc/features) nor pSp IR-SE "
                     "(input_layer/body/output_layer)")


def _spatial_from_fc(fc_in: int, channels: int, uri: str) -> int:
    cells = fc_in // channels
    side = round(cells ** 0.5)
    if side * side * channels != fc_in:
        raise WeightsMismatchError(f"{uri}: fc input {fc_in} is not channels {channels} x a square feature map")
    return side * 16


def build_identity_backbone(state: Mapping[str, torch.Tensor], kind: str, uri: str = "<state dict>") -> nn.Module:
    """Build the backbone whose shapes fit `state` (so tiny and real files both load strictly)."""
    if kind == "irse50":
        body = infer_ir_body(state, "body.", uri)
        fc = state.get("output_layer.3.weight")
        if fc is None:
            raise WeightsMismatchError(f"{uri}: missing key 'output_layer.3.weight' of the IR-SE backbone")
        input_size = _spatial_from_fc(int(fc.shape[1]), body["stage_channels"][-1], uri)
        affine = "output_layer.4.weight" in state
        return IRSEBackbone(input_size, embedding_dim=int(fc.shape[0]), affine=affine, **body)
    for key in ("conv1.weight", "fc.weight"):
        if key not in state:
            raise WeightsMismatchError(f"{uri}: missing key '{key}' of the arcface IResNet")
    layers = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    channels = tuple(int(state[f"layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5)
                     if f"layer{i}.0.conv1.weight" in state)
    if len(channels) != 4 or 0 in layers:
        raise WeightsMismatchError(f"{uri}: expected blocks 'layer1.0' .. 'layer4.0' of the arcface IResNet; "
                                   f"found blocks per layer {layers}")
    if kind.startswith("arcface_r") and ARCFACE_UNITS.get(kind[len("arcface_"):]) != layers:
        raise WeightsMismatchError(f"{uri}: kind '{kind}' has blocks per layer {ARCFACE_UNITS[kind[8:]]}, the "
                                   f"file has {layers}; use kind='auto' or the matching kind")
    fc = state["fc.weight"]
    input_size = _spatial_from_fc(int(fc.shape[1]), channels[-1], uri)
    return IResNet(layers, channels, input_size, num_features=int(fc.shape[0]))


def load_identity(uri: str, kind: str = "auto", sha256: str | None = None, crop: str | tuple = "auto",
                  device: str | torch.device = "cpu") -> IdentityEncoder:
    """Load arcface_torch `backbone.pth` or pSp `model_ir_se50.pth` (weights_only) into a frozen IdentityEncoder."""
    state = load_torch(uri, sha256)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{uri}: expected a raw state dict of tensors (arcface backbone.pth or "
                                   f"model_ir_se50.pth)")
    detected = detect_kind(state) if kind == "auto" else kind
    if detected not in KINDS:
        raise ValueError(f"{uri}: unknown identity kind '{kind}'; expected auto or one of {KINDS}")
    backbone = build_identity_backbone(state, detected, uri)
    check_state_dict(backbone, dict(state), uri, f"identity net ({detected})")
    encoder = IdentityEncoder(backbone, detected, crop).to(device).eval()
    return encoder.requires_grad_(False)


def save_identity(uri: str, net: nn.Module) -> str:
    """Write the backbone's raw state dict, exactly the layout of the public files."""
    backbone = net.backbone if isinstance(net, IdentityEncoder) else net
    return save_torch({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, uri)


def tiny_arcface(input_size: int = 32, seed: int = 0) -> IResNet:
    """A small randomly initialised IResNet in the arcface layout, for tests and demos."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return IResNet((1, 1, 1, 1), (8, 16, 24, 32), input_size=input_size, num_features=512)
