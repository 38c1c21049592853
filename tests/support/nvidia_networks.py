"""A small, independent re-implementation of NVIDIA's stylegan2-ada-pytorch networks, and pickles in their layout.

Written for the tests from the published architecture (module names, parameter shapes and the arithmetic of
`training/networks.py` and `torch_utils/ops`): the grouped, fused modulated convolution; `conv2d_resample`'s
paths (transposed convolution for up-sampling with `flip_weight = (up == 1)`, blur-then-strided convolution for
down-sampling); `upfirdn2d` as a true convolution with the filter scaled by `gain`; `bias_act` with its gain and
clamp; the skip generator and the residual discriminator. Nothing here is imported from fstrain.

`write_network_pickle` pickles `{"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}` the way
`torch_utils.persistence` does: every network as `_reconstruct_persistent_obj(meta)` with the class name, the
module source text and the instance `__dict__`; the `torch_utils.persistence` and `dnnlib.util` modules are stood
in for only while pickling.
"""
from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SQRT2 = math.sqrt(2.0)


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    f = torch.tensor(taps, dtype=torch.float32)
    f = f.outer(f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=(0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Zero-insert by `up`, pad (negative = crop), convolve with f * gain (flipped: a true convolution), keep
    every `down`-th pixel."""
    n, c, h, w = x.shape
    x0, x1, y0, y1 = padding
    if up > 1:
        grid = x.new_zeros(n, c, h, up, w, up)
        grid[:, :, :, 0, :, 0] = x
        x = grid.reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    kernel = (f * gain).flip([0, 1]).to(x.dtype)
    x = F.conv2d(x, kernel[None, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def conv2d_resample(x, w, f, up=1, down=1, padding=0, groups=1, flip_weight=True):
    """The three paths the StyleGAN2 layers take (`padding` relative to the up-sampled image)."""
    out_ch, in_per_group, kh, kw = w.shape
    fw = f.shape[-1] if f is not None else 1
    p0 = p1 = padding
    if up > 1:
        p0 += (fw + up - 1) // 2
        p1 += (fw - up) // 2
    if down > 1:
        p0 += (fw - down + 1) // 2
        p1 += (fw - down) // 2
    if kw == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))
        return F.conv2d(x, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=(p0, p1, p0, p1))
        return F.conv2d(x, w if flip_weight else w.flip([2, 3]), stride=down, groups=groups)
    if up > 1:
        w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_ch // groups, kh, kw)
        # conv_transpose2d receives the weight flipped only when the layer asked for correlation semantics off.
        w = w if not flip_weight else w.flip([2, 3])
        x = F.conv_transpose2d(x, w, stride=up, groups=groups)
        p0 -= kw - 1
        p1 -= kw - up
        return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=up ** 2)
    return F.conv2d(x, w if flip_weight else w.flip([2, 3]), padding=p0, groups=groups)


def bias_act(x, b, act="linear", gain=None, clamp=None):
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * (SQRT2 if gain is None else gain)
    elif gain is not None and gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None, demodulate=True,
                     flip_weight=True):
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    x = conv2d_resample(x, w.reshape(-1, in_ch, kh, kw), resample_filter, up=up, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return x + noise if noise is not None else x


# ---------------------------------------------------------------- pickled as NVIDIA's persistent classes

MODULE_SRC = "# training/networks.py stand-in\n"


class Persistent(nn.Module):
    """Pickles like a `@persistence.persistent_class` instance."""

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=MODULE_SRC, class_name=type(self).__name__,
                    state=dict(self.__dict__))
        return (_persistence_module()._reconstruct_persistent_obj, (meta,))


class FullyConnectedLayer(Persistent):
    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)   # a numpy float, as in the original
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias_gain != 1 else self.bias
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(Persistent):
    def __init__(self, z_dim, w_dim, num_ws, num_layers=2, lr_multiplier=0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, 0, w_dim, num_ws, num_layers
        self.w_avg_beta = 0.995
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(z_dim if i == 0 else w_dim, w_dim, activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, truncation_psi=1.0):
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisLayer(Persistent):
    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.activation, self.conv_clamp = resolution, up, "lrelu", conv_clamp
        self.kernel_size, self.padding, self.act_gain = 3, 1, np.sqrt(2)
        self.register_buffer("resample_filter", setup_filter())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w):
        noise = self.noise_const * self.noise_strength  # noise_mode="const"
        x = modulated_conv2d(x, self.weight, self.affine(w), noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        clamp = self.conv_clamp if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act="lrelu", gain=float(self.act_gain), clamp=clamp)


class ToRGBLayer(Persistent):
    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        return bias_act(modulated_conv2d(x, self.weight, styles, demodulate=False), self.bias, clamp=self.conv_clamp)


class SynthesisBlock(Persistent):
    def __init__(self, in_channels, out_channels, w_dim, resolution, is_last, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution, self.is_last, self.architecture = in_channels, resolution, is_last, "skip"
        self.register_buffer("resample_filter", setup_filter())
        self.num_conv, self.num_torgb = 0, 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, 3, w_dim, conv_clamp=conv_clamp)

    def forward(self, x, img, ws):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter))
        else:
            x = self.conv0(x, next(w_iter))
            x = self.conv1(x, next(w_iter))
        if img is not None:
            img = upfirdn2d(img, self.resample_filter, up=2, padding=(2, 1, 2, 1), gain=4)
        y = self.torgb(x, next(w_iter))
        return x, (img + y if img is not None else y)


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim, img_resolution, channel_base, channel_max, conv_clamp=None):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, 3
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim, res,
                                   is_last=(res == img_resolution), conv_clamp=conv_clamp)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws):
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb))
            w_idx += block.num_conv
        return img


class Generator(Persistent):
    def __init__(self, z_dim=32, w_dim=32, img_resolution=32, channel_base=512, channel_max=16, num_layers=2,
                 conv_clamp=256):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, 0, w_dim, img_resolution, 3
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_layers)
        self._init_kwargs = _easy_dict(z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution,
                                       synthesis_kwargs=_easy_dict(channel_base=channel_base, channel_max=channel_max))

    def forward(self, z, truncation_psi=1.0):
        return self.synthesis(self.mapping(z, truncation_psi))


class Conv2dLayer(Persistent):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", down=1):
        super().__init__()
        self.activation, self.down, self.padding = activation, down, kernel_size // 2
        self.register_buffer("resample_filter", setup_filter())
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = np.sqrt(2) if activation == "lrelu" else 1.0
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x, gain=1.0):
        x = conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, down=self.down,
                            padding=self.padding, flip_weight=True)
        return bias_act(x, self.bias, act=self.activation, gain=float(self.act_gain) * gain)


class DiscriminatorBlock(Persistent):
    def __init__(self, in_channels, tmp_channels, out_channels, resolution):
        super().__init__()
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, "resnet"
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(3, tmp_channels, 1, activation="lrelu")
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu")
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=np.sqrt(0.5))
        return y + x


class MinibatchStdLayer(Persistent):
    def __init__(self, group_size=4, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        y = x.reshape(g, -1, self.num_channels, c // self.num_channels, h, w)
        y = ((y - y.mean(dim=0)).square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
        y = y.reshape(-1, self.num_channels, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(Persistent):
    def __init__(self, in_channels, resolution=4):
        super().__init__()
        self.cmap_dim, self.architecture = 0, "resnet"
        self.mbstd = MinibatchStdLayer(4, 1)
        self.conv = Conv2dLayer(in_channels + 1, in_channels, 3, activation="lrelu")
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x):
        return self.out(self.fc(self.conv(self.mbstd(x)).flatten(1)))


class Discriminator(Persistent):
    def __init__(self, img_resolution=32, channel_base=512, channel_max=16):
        super().__init__()
        self.c_dim, self.img_resolution, self.img_channels = 0, img_resolution, 3
        self.block_resolutions = [2 ** i for i in range(int(np.log2(img_resolution)), 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            setattr(self, f"b{res}", DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res],
                                                        channels[res // 2], res))
        self.b4 = DiscriminatorEpilogue(channels[4])

    def forward(self, img):
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x)


class NamedRecord(Persistent):
    """Any other persistent class by name (e.g. StyleGAN3's SynthesisInput), children given as modules."""

    def __init__(self, class_name: str, **children: nn.Module):
        super().__init__()
        self._name = class_name
        for key, child in children.items():
            setattr(self, key, child)

    def __reduce__(self):
        fn, (meta,) = super().__reduce__()
        meta["class_name"] = self._name
        return fn, (meta,)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial values everywhere the default init leaves zeros or ones (biases, noise strengths, w_avg)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if ".affine." in f".{name}" else 0.0))
        for name, b in module.named_buffers():
            if name.endswith("w_avg"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.5)
    return module.eval().requires_grad_(False)


# ---------------------------------------------------------------- pickling in NVIDIA's layout

class _EasyDict(dict):
    pass


def _easy_dict(**kwargs: Any) -> dict:
    return _EasyDict(kwargs)


_MODULES: dict[str, types.ModuleType] = {}


def _persistence_module() -> types.ModuleType:
    if "torch_utils.persistence" not in _MODULES:
        module = types.ModuleType("torch_utils.persistence")

        def _reconstruct_persistent_obj(meta):  # never called by the code under test
            raise AssertionError("the converter must not rebuild NVIDIA classes")
        _reconstruct_persistent_obj.__module__ = module.__name__
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        module._reconstruct_persistent_obj = _reconstruct_persistent_obj
        _MODULES[module.__name__] = module
        util = types.ModuleType("dnnlib.util")
        _EasyDict.__module__, _EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
        util.EasyDict = _EasyDict
        _MODULES[util.__name__] = util
        for parent in ("torch_utils", "dnnlib"):  # pickle imports the parent package first
            _MODULES[parent] = types.ModuleType(parent)
    return _MODULES["torch_utils.persistence"]


@contextlib.contextmanager
def _stand_in_modules() -> Iterator[None]:
    _persistence_module()
    saved = {name: sys.modules.get(name) for name in _MODULES}
    sys.modules.update(_MODULES)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def network_pickle_bytes(data: dict, module_src: str | None = None) -> bytes:
    """pickle.dumps of a snapshot dict the way training_loop.py writes network-snapshot-*.pkl."""
    global MODULE_SRC
    previous = MODULE_SRC
    if module_src is not None:
        MODULE_SRC = module_src
    try:
        with _stand_in_modules():
            return pickle.dumps(data)
    finally:
        MODULE_SRC = previous


def snapshot(seed: int = 0, **g_kwargs: Any) -> dict:
    """{G, D, G_ema, augment_pipe, training_set_kwargs} with tiny random networks (G_ema differs from G)."""
    torch.manual_seed(seed)
    g = randomise(Generator(**g_kwargs), seed + 1)
    g_ema = randomise(Generator(**g_kwargs), seed + 2)
    d_kwargs = {k: g_kwargs[k] for k in ("img_resolution", "channel_base", "channel_max") if k in g_kwargs}
    d = randomise(Discriminator(**d_kwargs), seed + 3)
    return {"G": g, "D": d, "G_ema": g_ema, "augment_pipe": None,
            "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "resolution": 32}}
