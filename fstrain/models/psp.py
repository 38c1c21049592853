"""pSp GradualStyleEncoder (IR-SE50 body + FPN + one map2style block per latent) for W+ and Z+ codes.

Checkpoint layout (pSp / DualStyleGAN `.pt`, read with weights_only=True):
    {"state_dict": {"encoder.<key>": ..., "decoder.<key>": ...}, "latent_avg": (n_latent, 512), "opts": dict}
`encoder.*` keys match pSp's module tree exactly (`input_layer`, `body.N.res_layer.*`, `styles.N.convs.*`,
`styles.N.linear.*`, `latlayer1/2`), so real files load strictly.

e4e (omertov/encoder4editing) files have the same layout and keys with `opts["encoder_type"] == "Encoder4Editing"`;
they load into `Encoder4Editing`, whose forward is e4e's: one base code from the coarsest map for every layer, plus
a per-layer offset from the FPN level of that layer. Other pSp encoder types are refused by name.

W+ encoders output `codes + latent_avg` (pSp's `start_from_latent_avg`); Z+ encoders (DualStyleGAN's
`encoder.pt`) output z+ codes, which the generator maps layer by layer, so no average is added. Which space a file
holds is not recorded by pSp itself: we write `opts["latent_space"]`; for third-party files pass `space=`.

Smaller encoders keep the key pattern and shrink `units`, `stage_channels`, `block_channels` and `input_size`;
those are saved in `opts` so our files rebuild exactly.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fstrain.models.identity import FULL_CHANNELS, IRSE_UNITS, infer_ir_body, make_ir_body
from fstrain.models.registry import WeightsMismatchError, check_state_dict, load_torch, save_torch
from fstrain.models.stylegan2 import EqualLinear

SPACES = ("w+", "z+")
COARSE_END, MIDDLE_END = 3, 7  # pSp: styles 0-2 read the 1/16 map, 3-6 the 1/8 map, the rest the 1/4 map
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "50": {"units": IRSE_UNITS[50], "stage_channels": FULL_CHANNELS, "block_channels": None, "input_size": 256},
    # Stages must widen so the architecture can be read back off the weights (see identity.infer_ir_body).
    "tiny": {"units": (1, 1, 1, 1), "stage_channels": (16, 24, 32, 48), "block_channels": 64, "input_size": 32},
}


class GradualStyleBlock(nn.Module):
    """map2style: stride-2 conv + LeakyReLU(0.01) down to 1x1, then an EqualLinear to one style vector."""

    def __init__(self, in_channels: int, channels: int, style_dim: int, spatial: int):
        super().__init__()
        self.channels = channels
        layers: list[nn.Module] = []
        for i in range(max(int(math.log2(spatial)), 1)):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=2, padding=1),
                       nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, style_dim, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.channels))


class GradualStyleEncoder(nn.Module):
    """pSp's encoder: IR-SE body; FPN over the ends of stages 2-4 (c1, c2, c3); n_styles map2style heads.

    Defaults are the real pSp (IR-SE50, 256 px input, 18 styles of 512). `block_channels` is the map2style
    width (pSp: = style_dim = 512).
    """

    def __init__(self, num_layers: int = 50, mode: str = "ir_se", n_styles: int = 18, input_nc: int = 3,
                 style_dim: int = 512, units: Sequence[int] | None = None,
                 stage_channels: Sequence[int] = FULL_CHANNELS, block_channels: int | None = None,
                 input_size: int = 256):
        super().__init__()
        if mode not in ("ir", "ir_se"):
            raise ValueError(f"mode must be 'ir' or 'ir_se'; got {mode!r}")
        if units is None:
            if num_layers not in IRSE_UNITS:
                raise ValueError(f"num_layers must be one of {sorted(IRSE_UNITS)} (or pass units=); got {num_layers}")
            units = IRSE_UNITS[num_layers]
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16; got {input_size}")
        block_channels = block_channels or style_dim
        self.n_styles = n_styles
        self.style_dim = style_dim
        self.input_size = input_size
        self.config = {"mode": mode, "n_styles": n_styles, "input_nc": input_nc, "style_dim": style_dim,
                       "units": list(units), "stage_channels": list(stage_channels),
                       "block_channels": block_channels, "input_size": input_size}
        # Taps: the last unit of stages 2, 3 and 4 (pSp's body[6], body[20], body[23] for IR-SE50).
        ends = [sum(units[:i + 1]) - 1 for i in range(4)]
        self.taps = (ends[1], ends[2], ends[3])

        c0, c_fpn = stage_channels[0], stage_channels[3]
        self.input_layer = nn.Sequential(nn.Conv2d(input_nc, c0, 3, 1, 1, bias=False), nn.BatchNorm2d(c0),
                                         nn.PReLU(c0))
        self.body = make_ir_body(units, stage_channels, se=(mode == "ir_se"))
        self.styles = nn.ModuleList()
        for i in range(n_styles):
            spatial = input_size // (16 if i < COARSE_END else 8 if i < MIDDLE_END else 4)
            self.styles.append(GradualStyleBlock(c_fpn, block_channels, style_dim, spatial))
        self.latlayer1 = nn.Conv2d(stage_channels[2], c_fpn, 1)
        self.latlayer2 = nn.Conv2d(stage_channels[1], c_fpn, 1)

    @staticmethod
    def _upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral

    def feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c1, c2, c3): the body's outputs at the fine, middle and coarse taps."""
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                taps.append(x)
        c1, c2, c3 = taps
        return c1, c2, c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.feature_maps(x)
        latents = [self.styles[j](c3) for j in range(min(COARSE_END, self.n_styles))]
        p2 = self._upsample_add(c3, self.latlayer1(c2))
        latents += [self.styles[j](p2) for j in range(COARSE_END, min(MIDDLE_END, self.n_styles))]
        p1 = self._upsample_add(p2, self.latlayer2(c1))
        latents += [self.styles[j](p1) for j in range(MIDDLE_END, self.n_styles)]
        return torch.stack(latents, dim=1)


class Encoder4Editing(GradualStyleEncoder):
    """e4e: the same modules and keys as pSp's encoder, read coarse-to-fine: w_i = styles[0](c3) + styles[i](F_i)
    for i >= 1, F_i = c3 / p2 / p1 for the coarse / middle / fine layers (e4e at inference: every offset on)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.feature_maps(x)
        base = self.styles[0](c3)
        codes = [base]
        features = c3
        for i in range(1, self.n_styles):
            if i == COARSE_END:
                p2 = self._upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_END:
                features = self._upsample_add(p2, self.latlayer2(c1))
            codes.append(base + self.styles[i](features))
        return torch.stack(codes, dim=1)


ENCODER_TYPES: dict[str, type[GradualStyleEncoder]] = {"GradualStyleEncoder": GradualStyleEncoder,
                                                       "Encoder4Editing": Encoder4Editing}


class PSPEncoder(nn.Module):
    """Image in [-1, 1] (any size; resized to the encoder's input size) -> (N, n_styles, style_dim) codes.

    space "w+": codes + latent_avg (when `add_latent_avg`); space "z+": raw codes.
    """

    def __init__(self, encoder: GradualStyleEncoder, latent_avg: torch.Tensor | None, space: str = "w+",
                 add_latent_avg: bool | None = None):
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}; got {space!r}")
        self.encoder = encoder
        self.space = space
        self.add_latent_avg = (space == "w+") if add_latent_avg is None else add_latent_avg
        if latent_avg is None:
            if self.add_latent_avg:
                raise ValueError("a W+ encoder that starts from the average latent needs latent_avg")
            latent_avg = torch.zeros(encoder.n_styles, encoder.style_dim)
        latent_avg = torch.as_tensor(latent_avg, dtype=torch.float32)
        if latent_avg.ndim == 1:  # learn_in_w style (style_dim,) average: one row per style
            latent_avg = latent_avg.unsqueeze(0).repeat(encoder.n_styles, 1)
        if tuple(latent_avg.shape) != (encoder.n_styles, encoder.style_dim):
            raise ValueError(f"latent_avg has shape {tuple(latent_avg.shape)}; expected "
                             f"({encoder.n_styles}, {encoder.style_dim})")
        self.register_buffer("latent_avg", latent_avg.clone())

    @property
    def n_latent(self) -> int:
        return self.encoder.n_styles

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"PSPEncoder expects images (N, C, H, W) in [-1, 1]; got {tuple(images.shape)}")
        size = self.encoder.input_size
        if images.shape[-2:] != (size, size):
            # pSp feeds 256 px images; area-average when shrinking (no aliasing), bilinear when growing.
            if images.shape[-2] >= size and images.shape[-1] >= size:
                images = F.adaptive_avg_pool2d(images, size)
            else:
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        codes = self.encoder(images)
        return codes + self.latent_avg if self.add_latent_avg else codes


# ---------------------------------------------------------------- load / save


def _split_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _encoder_kwargs(opts: Mapping[str, Any], enc_state: Mapping[str, torch.Tensor], uri: str) -> dict[str, Any]:
    """Architecture from our opts keys when present, else read off the weights (real pSp files)."""
    style_ids = {int(k.split(".")[1]) for k in enc_state if k.startswith("styles.")}
    if not style_ids:
        raise WeightsMismatchError(f"{uri}: no 'encoder.styles.N.*' keys; is this a pSp GradualStyleEncoder file?")
    n_styles = int(opts.get("n_styles") or len(style_ids))
    if n_styles != len(style_ids):
        raise WeightsMismatchError(f"{uri}: opts n_styles={n_styles} but the file has {len(style_ids)} "
                                   f"'encoder.styles.N' blocks")
    if "encoder_units" in opts:
        return {"n_styles": n_styles, "mode": opts.get("encoder_mode", "ir_se"),
                "input_nc": int(opts.get("input_nc", 3)), "style_dim": int(opts["style_dim"]),
                "units": list(opts["encoder_units"]), "stage_channels": list(opts["encoder_stage_channels"]),
                "block_channels": int(opts["encoder_block_channels"]), "input_size": int(opts["encoder_input_size"])}
    body = infer_ir_body(enc_state, "body.", uri)
    linear = enc_state.get("styles.0.linear.weight")
    first_conv = enc_state.get("input_layer.0.weight")
    if linear is None or first_conv is None:
        missing = "styles.0.linear.weight" if linear is None else "input_layer.0.weight"
        raise WeightsMismatchError(f"{uri}: missing key 'encoder.{missing}'")
    # pSp encodes 256 px inputs; the deepest map2style head has log2(input/16) stride-2 convs.
    n_convs = len({k.split(".")[3] for k in enc_state if k.startswith("styles.0.convs.")})
    return {"n_styles": n_styles, "mode": "ir_se" if body["se"] else "ir", "input_nc": int(first_conv.shape[1]),
            "style_dim": int(linear.shape[0]), "units": body["units"], "stage_channels": body["stage_channels"],
            "block_channels": int(linear.shape[1]), "input_size": 16 * 2 ** n_convs}


def _infer_space(opts: Mapping[str, Any], uri: str) -> str:
    space = opts.get("latent_space")
    if space is None:
        space = "z+" if opts.get("z_plus_latent") else "w+"
    if space not in SPACES:
        raise ValueError(f"{uri}: opts latent_space={space!r}; expected one of {SPACES}")
    return space


def read_psp_checkpoint(uri: str, sha256: str | None = None) -> dict[str, Any]:
    checkpoint = load_torch(uri, sha256)
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise WeightsMismatchError(f"{uri}: not a pSp checkpoint: expected a dict with 'state_dict' (with "
                                   f"'encoder.' keys), 'latent_avg' and 'opts'; found {keys}")
    return dict(checkpoint)


def load_encoder(uri: str, space: str | None = None, sha256: str | None = None,
                 device: str | torch.device = "cpu") -> PSPEncoder:
    """Load a pSp-format encoder checkpoint strictly into a frozen, eval-mode PSPEncoder.

    `space`: "w+" or "z+"; None reads `opts["latent_space"]` (ours) or `opts["z_plus_latent"]`, else "w+".
    """
    checkpoint = read_psp_checkpoint(uri, sha256)
    opts = dict(checkpoint.get("opts") or {})
    enc_state = _split_state(checkpoint["state_dict"], "encoder.")
    if not enc_state:
        raise WeightsMismatchError(f"{uri}: 'state_dict' has no 'encoder.*' keys")
    space = space or _infer_space(opts, uri)
    encoder_type = opts.get("encoder_type") or "GradualStyleEncoder"
    if encoder_type not in ENCODER_TYPES:
        raise WeightsMismatchError(f"{uri}: opts encoder_type={encoder_type!r} is not supported; expected one of "
                                   f"{sorted(ENCODER_TYPES)} (pSp's GradualStyleEncoder or e4e's Encoder4Editing)")
    encoder = ENCODER_TYPES[encoder_type](**_encoder_kwargs(opts, enc_state, uri))
    check_state_dict(encoder, enc_state, uri, "pSp encoder ('encoder.' prefix)")
    add_avg = space == "w+" and bool(opts.get("start_from_latent_avg", True))
    latent_avg = checkpoint.get("latent_avg")
    if isinstance(latent_avg, torch.Tensor) and latent_avg.ndim == 2 and latent_avg.shape[0] == 1:
        latent_avg = latent_avg[0]  # a (1, style_dim) mean_latent, broadcast over layers as pSp/e4e do
    if add_avg and latent_avg is None:
        raise WeightsMismatchError(f"{uri}: W+ encoder with start_from_latent_avg but no 'latent_avg' entry")
    try:
        model = PSPEncoder(encoder, latent_avg, space, add_latent_avg=add_avg)
    except ValueError as exc:
        raise WeightsMismatchError(f"{uri}: 'latent_avg': {exc}") from exc
    return model.to(device).eval().requires_grad_(False)


def load_psp_decoder_state(uri: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The `decoder.*` weights of a pSp checkpoint (a rosinality generator state dict), prefix stripped."""
    return _split_state(read_psp_checkpoint(uri, sha256)["state_dict"], "decoder.")


def save_encoder(uri: str, encoder: PSPEncoder | GradualStyleEncoder, latent_avg: torch.Tensor | None = None,
                 opts: Mapping[str, Any] | None = None, decoder_state: Mapping[str, torch.Tensor] | None = None,
                 space: str | None = None) -> str:
    """Write a pSp-layout checkpoint; our architecture keys go into `opts` so the file rebuilds exactly."""
    core = encoder.encoder if isinstance(encoder, PSPEncoder) else encoder
    if space is None:
        space = encoder.space if isinstance(encoder, PSPEncoder) else "w+"
    if latent_avg is None and isinstance(encoder, PSPEncoder):
        latent_avg = encoder.latent_avg
    cfg = core.config
    full_opts = {"output_size": None, **dict(opts or {}), "encoder_type": type(core).__name__,
                 "n_styles": cfg["n_styles"], "input_nc": cfg["input_nc"], "style_dim": cfg["style_dim"],
                 "latent_space": space, "start_from_latent_avg": space == "w+",
                 "encoder_mode": cfg["mode"], "encoder_units": list(cfg["units"]),
                 "encoder_stage_channels": list(cfg["stage_channels"]),
                 "encoder_block_channels": cfg["block_channels"], "encoder_input_size": cfg["input_size"]}
    if full_opts["output_size"] is None:
        full_opts["output_size"] = 2 ** ((cfg["n_styles"] + 2) // 2)  # n_latent = 2 log2(size) - 2
    state = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in core.state_dict().items()}
    state.update({f"decoder.{k}": v.detach().cpu().contiguous() for k, v in (decoder_state or {}).items()})
    payload: dict[str, Any] = {"state_dict": state, "opts": full_opts}
    if latent_avg is not None:
        payload["latent_avg"] = torch.as_tensor(latent_avg).detach().cpu().float().reshape(cfg["n_styles"], -1)
    return save_torch(payload, uri)


def build_encoder(preset: str, n_styles: int, style_dim: int = 512, input_size: int | None = None,
                  seed: int = 0) -> GradualStyleEncoder:
    """A freshly initialised encoder from ENCODER_PRESETS ('50' = real pSp size, 'tiny' for tests)."""
    if preset not in ENCODER_PRESETS:
        raise ValueError(f"unknown encoder preset {preset!r}; expected one of {sorted(ENCODER_PRESETS)}")
    kwargs = dict(ENCODER_PRESETS[preset])
    if input_size is not None:
        kwargs["input_size"] = input_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GradualStyleEncoder(n_styles=n_styles, style_dim=style_dim, **kwargs)
