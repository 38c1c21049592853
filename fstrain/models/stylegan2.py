"""StyleGAN2 generator and discriminator with rosinality/stylegan2-pytorch's module tree and state dict.

Every parameter and buffer has the same name and shape as in rosinality's `model.py`, so its checkpoints
load with `strict=True`, and the arithmetic follows its fused modulated convolution op for op, so the same
weights, latent and noise give the same image. Blur/up/down-sampling and bias+leaky-ReLU go through the
`kernels` ops (PyTorch reference on CPU, CUDA kernels on GPU).

Only addition: `channel_max` caps every entry of the channel table. Its default (512) is the maximum of
rosinality's table, so the default layout is untouched; tests and demos use e.g. 32 for fast tiny models.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kernels import bias_act, upfirdn2d

DEFAULT_BLUR_KERNEL = (1, 3, 3, 1)


def channel_table(channel_multiplier: int = 2, channel_max: int = 512) -> dict[int, int]:
    """Feature channels per resolution, rosinality's table capped at `channel_max`."""
    table = {
        4: 512, 8: 512, 16: 512, 32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return {res: min(ch, channel_max) for res, ch in table.items()}


def log2_size(size: int) -> int:
    log_size = int(math.log2(size)) if size > 0 else 0
    if size < 8 or 2 ** log_size != size or size > 1024:
        raise ValueError(f"size must be a power of two from 8 to 1024 (rosinality's table); got {size}")
    return log_size


def make_kernel(taps: Sequence[float]) -> torch.Tensor:
    """2-D FIR kernel from 1-D taps (outer product), normalised to sum to 1."""
    kernel = torch.tensor(taps, dtype=torch.float32)
    if kernel.ndim == 1:
        kernel = kernel[None, :] * kernel[:, None]
    return kernel / kernel.sum()


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """sqrt(2) * leaky_relu(x + bias, 0.2), bias along dim 1 (rosinality's fused_leaky_relu)."""
    return bias_act(x, bias, act="lrelu", alpha=0.2, gain=math.sqrt(2), dim=1)


# ---------------------------------------------------------------- building blocks


class PixelNorm(nn.Module):
    """Normalise each vector to unit root-mean-square over dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    """2x upsampling with a FIR filter (used on the ToRGB skip path). Buffer: `kernel`."""

    def __init__(self, blur_kernel: Sequence[int], factor: int = 2):
        super().__init__()
        self.factor = factor
        kernel = make_kernel(blur_kernel) * (factor ** 2)  # zero insertion loses factor^2 of the energy
        self.register_buffer("kernel", kernel)
        p = kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, down=1, pad=self.pad)


class Blur(nn.Module):
    """FIR low-pass filter with padding. Buffer: `kernel` (scaled by factor^2 after a transposed conv)."""

    def __init__(self, blur_kernel: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        kernel = make_kernel(blur_kernel)
        if upsample_factor > 1:
            kernel = kernel * (upsample_factor ** 2)
        self.register_buffer("kernel", kernel)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv2d with the equalized learning rate: weights stored N(0,1), scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear layer with the equalized learning rate and a learning-rate multiplier.

    Stored weight is N(0,1)/lr_mul; the effective weight is stored * lr_mul/sqrt(in) and the effective bias
    stored * lr_mul, so `lr_mul` slows this layer's effective learning rate (0.01 in the mapping network).
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim).fill_(bias_init)) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            # Same order as rosinality: linear without bias, then the fused bias + leaky ReLU.
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class FusedLeakyReLU(nn.Module):
    """Learned bias + leaky ReLU(0.2) * sqrt(2). Parameter: `bias` (channel,)."""

    def __init__(self, channel: int, bias: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, fused as one grouped convolution over the batch (rosinality's fused path).

    s = modulation(style); w' = scale * W * s (per input channel); if demodulate, w'' = w' / sqrt(sum w'^2 + 1e-8)
    per output channel. Upsampling: transposed conv (stride 2) then a blur with pad (1, 1) for 3x3 kernels.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, downsample: bool = False,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        self.downsample = downsample
        factor = 2
        if upsample:
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        if downsample:
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2, p // 2))
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def modulated_weight(self, style: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B, out, in, k, k)."""
        batch = style.shape[0]
        s = self.modulation(style).view(batch, 1, self.in_channel, 1, 1)
        weight = self.scale * self.weight * s
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        return weight

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        batch, in_channel, height, width = x.shape
        k = self.kernel_size
        weight = self.modulated_weight(style)
        if self.upsample:
            x = x.view(1, batch * in_channel, height, width)
            # conv_transpose2d wants (in, out/groups, k, k): swap the out and in axes per sample.
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_channel, out.shape[2], out.shape[3])
            return self.blur(out)
        weight = weight.view(batch * self.out_channel, in_channel, k, k)
        if self.downsample:
            x = self.blur(x)
            x = x.view(1, batch * in_channel, x.shape[2], x.shape[3])
            out = F.conv2d(x, weight, padding=0, stride=2, groups=batch)
        else:
            x = x.view(1, batch * in_channel, height, width)
            out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    """x + weight * noise, noise (N,1,H,W) drawn fresh when not given. Parameter: `weight` (1,), init 0."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 starting tensor. Parameter: `input` (1, C, 4, 4)."""

    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated conv -> noise -> bias + leaky ReLU."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL, demodulate: bool = True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel, demodulate=demodulate)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB plus bias, added to the upsampled running image."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ---------------------------------------------------------------- generator


class Generator(nn.Module):
    """rosinality's StyleGAN2 generator.

    Latent layout: conv1 <- w[0], to_rgb1 <- w[1]; then per resolution, upsampling conv <- w[i], conv <- w[i+1],
    to_rgb <- w[i+2] for i = 1, 3, ...; `n_latent` = 2*log2(size) - 2 codes in all.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL, lr_mlp: float = 0.01, channel_max: int = 512):
        super().__init__()
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.channel_multiplier = channel_multiplier
        self.channel_max = channel_max
        self.blur_kernel = tuple(blur_kernel)
        self.lr_mlp = lr_mlp

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)])

        self.channels = channel_table(channel_multiplier, channel_max)
        self.log_size = log2_size(size)
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2

        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2 ** res, 2 ** res))

        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2 ** i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel

    # -- architecture description (saved as metadata so loaders can rebuild the module)
    def architecture(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp,
                "channel_multiplier": self.channel_multiplier, "channel_max": self.channel_max,
                "blur_kernel": list(self.blur_kernel), "lr_mlp": self.lr_mlp}

    # -- latents
    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Map z (N, style_dim) -> w, or z_plus (N, L, style_dim) -> w_plus layer by layer.

        PixelNorm normalises over dim 1, so a 3-D z_plus must be flattened to rows first, otherwise it would
        normalise across layers.
        """
        if z.ndim == 2:
            return self.style(z)
        if z.ndim == 3:
            n, layers, dim = z.shape
            return self.style(z.reshape(n * layers, dim)).view(n, layers, dim)
        raise ValueError(f"get_latent expects z (N, {self.style_dim}) or z_plus (N, L, {self.style_dim}); "
                         f"got shape {tuple(z.shape)}")

    @torch.no_grad()
    def mean_latent(self, n_latent: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Average w over `n_latent` random z: (1, style_dim). Pass a torch.Generator for a reproducible mean."""
        device = self.input.input.device
        z = torch.randn(n_latent, self.style_dim, generator=generator, device="cpu").to(device)
        return self.style(z).mean(0, keepdim=True)

    # -- noise
    def noise_from(self, rng: torch.Generator | None, batch: int = 1,
                   device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Random noise maps, one per layer (rosinality's layout: 4, 8, 8, 16, 16, ...), each (batch, 1, R, R),
        drawn layer by layer from the CPU generator `rng` (None: torch's global one) and moved to `device` (default
        the generator's): every sampler of noise in the project, so the same rng gives the same maps everywhere."""
        device = self.input.input.device if device is None else device
        return [torch.randn(batch, 1, *buf.shape[2:], generator=rng).to(device) for buf in self.noise_buffers()]

    def make_noise(self) -> list[torch.Tensor]:
        """One fresh random noise map per layer (rosinality's API)."""
        return self.noise_from(None)

    def fixed_noise(self, seed: int, batch: int = 1) -> list[torch.Tensor]:
        """Deterministic noise maps from `seed` (same seed -> same maps on any device)."""
        return self.noise_from(torch.Generator(device="cpu").manual_seed(seed), batch)

    def noise_buffers(self) -> list[torch.Tensor]:
        """The stored `noises.noise_i` buffers, in layer order."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    # -- rendering
    def synthesis(self, w_plus: torch.Tensor, noise: Sequence[torch.Tensor | None] | None = None,
                  randomize_noise: bool = False) -> torch.Tensor:
        """Render from w_plus (N, n_latent, style_dim). Noise: given list, stored buffers, or fresh random."""
        if w_plus.ndim != 3 or w_plus.shape[1] != self.n_latent or w_plus.shape[2] != self.style_dim:
            raise ValueError(f"synthesis expects w_plus of shape (N, {self.n_latent}, {self.style_dim}); "
                             f"got {tuple(w_plus.shape)}")
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.noise_buffers()
        if len(noise) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")

        out = self.input(w_plus)
        out = self.conv1(out, w_plus[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, w_plus[:, 1])
        i = 1
        for up_conv, conv, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2],
                                                         noise[2::2], self.to_rgbs):
            out = up_conv(out, w_plus[:, i], noise=noise1)
            out = conv(out, w_plus[:, i + 1], noise=noise2)
            skip = to_rgb(out, w_plus[:, i + 2], skip)
            i += 2
        return skip

    def broadcast_latents(self, styles: list[torch.Tensor], inject_index: int | None) -> torch.Tensor:
        """One or two codes (2-D w or 3-D w_plus) -> w_plus, style mixing at `inject_index`."""
        if len(styles) == 1:
            w = styles[0]
            return w if w.ndim == 3 else w.unsqueeze(1).repeat(1, self.n_latent, 1)
        if len(styles) != 2:
            raise ValueError(f"styles must hold one or two codes; got {len(styles)}")
        if inject_index is None:
            inject_index = random.randint(1, self.n_latent - 1)
        if not 0 <= inject_index <= self.n_latent:
            raise ValueError(f"inject_index={inject_index} is outside 0..{self.n_latent}")
        first, second = (w if w.ndim == 3 else w.unsqueeze(1).repeat(1, self.n_latent, 1) for w in styles)
        return torch.cat([first[:, :inject_index], second[:, inject_index:]], 1)

    def forward(self, styles: list[torch.Tensor] | torch.Tensor, return_latents: bool = False,
                inject_index: int | None = None, truncation: float = 1, truncation_latent: torch.Tensor | None = None,
                input_is_latent: bool = False, noise: Sequence[torch.Tensor | None] | None = None,
                randomize_noise: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rosinality's forward. `styles`: list of z / w (N, D) or z_plus / w_plus (N, n_latent, D)."""
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        for s in styles:
            if s.ndim not in (2, 3) or s.shape[-1] != self.style_dim or (s.ndim == 3 and s.shape[1] != self.n_latent):
                raise ValueError(f"each style must be (N, {self.style_dim}) or (N, {self.n_latent}, "
                                 f"{self.style_dim}); got {tuple(s.shape)}")
        if not input_is_latent:
            styles = [self.get_latent(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.noise_buffers()
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. latent_avg or mean_latent(4096))")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]
        latent = self.broadcast_latents(list(styles), inject_index)
        image = self.synthesis(latent, noise=noise)
        return (image, latent) if return_latents else (image, None)


# ---------------------------------------------------------------- discriminator


class ConvLayer(nn.Sequential):
    """[Blur] -> EqualConv2d -> [FusedLeakyReLU]; keys are sequential indices as in rosinality."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL, bias: bool = True, activate: bool = True):
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """Two 3x3 convs (second one downsampling) plus a 1x1 downsampling skip, summed and scaled by 1/sqrt(2)."""

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False, bias=False,
                              blur_kernel=blur_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """rosinality's residual StyleGAN2 discriminator: (N, 3, size, size) -> (N, 1) logits."""

    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL,
                 channel_max: int = 512):
        super().__init__()
        self.size = size
        self.channel_multiplier = channel_multiplier
        self.channel_max = channel_max
        self.blur_kernel = tuple(blur_kernel)
        channels = channel_table(channel_multiplier, channel_max)
        log_size = log2_size(size)

        convs: list[nn.Module] = [ConvLayer(3, channels[size], 1)]
        in_channel = channels[size]
        for i in range(log_size, 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)

        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"),
            EqualLinear(channels[4], 1),
        )

    def architecture(self) -> dict:
        return {"size": self.size, "channel_multiplier": self.channel_multiplier, "channel_max": self.channel_max,
                "blur_kernel": list(self.blur_kernel)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        batch, channel, height, width = out.shape
        # Minibatch standard deviation over groups of up to 4 samples. rosinality uses min(batch, 4), which
        # fails when that does not divide the batch; the largest divisor <= 4 is identical wherever it works.
        group = next(g for g in range(min(batch, self.stddev_group), 0, -1) if batch % g == 0)
        stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = torch.cat([out, stddev], 1)
        out = self.final_conv(out)
        return self.final_linear(out.view(batch, -1))
