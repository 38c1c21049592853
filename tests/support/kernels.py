"""Naive loop implementations the kernels are checked against, and the op configurations StyleGAN2 uses."""
from __future__ import annotations

import math

import numpy as np
import pytest

__all__ = ["naive_upfirdn2d", "naive_bias_act", "stylegan_blur_kernel", "UPFIRDN_CASES", "kernels_cache"]


def naive_upfirdn2d(x: np.ndarray, kernel: np.ndarray, up: tuple[int, int], down: tuple[int, int],
                    pad: tuple[int, int, int, int]) -> np.ndarray:
    """Straight from the definition, one output pixel at a time: zero-insert, pad/crop, true convolution, stride.

    up/down are (x, y); pad is (x0, x1, y0, y1).
    """
    n, c, h, w = x.shape
    up_x, up_y = up
    down_x, down_y = down
    pad_x0, pad_x1, pad_y0, pad_y1 = pad
    kh, kw = kernel.shape

    def padded(row: int, col: int) -> np.ndarray:
        """Value at (row, col) of the zero-inserted, padded/cropped signal, for every (n, c)."""
        r, q = row - pad_y0, col - pad_x0  # position in the zero-inserted signal
        if 0 <= r < h * up_y and 0 <= q < w * up_x and r % up_y == 0 and q % up_x == 0:
            return x[:, :, r // up_y, q // up_x]
        return np.zeros((n, c), dtype=x.dtype)

    full_h = h * up_y + pad_y0 + pad_y1
    full_w = w * up_x + pad_x0 + pad_x1
    out_h = (full_h - kh) // down_y + 1
    out_w = (full_w - kw) // down_x + 1
    out = np.zeros((n, c, out_h, out_w), dtype=x.dtype)
    for oy in range(out_h):
        for ox in range(out_w):
            acc = np.zeros((n, c), dtype=x.dtype)
            for ty in range(kh):
                for tx in range(kw):
                    # True convolution: the window's first sample meets the kernel's last tap.
                    acc += padded(oy * down_y + ty, ox * down_x + tx) * kernel[kh - 1 - ty, kw - 1 - tx]
            out[:, :, oy, ox] = acc
    return out


def naive_bias_act(x: np.ndarray, bias: np.ndarray | None, act: str, alpha: float, gain: float | None,
                   clamp: float | None, dim: int) -> np.ndarray:
    """Element by element: gain * act(x + bias[index along dim]), clamped."""
    if gain is None:
        gain = 1.0 if act == "linear" else math.sqrt(2)
    out = np.empty_like(x)
    for index in np.ndindex(*x.shape):
        v = float(x[index]) + (float(bias[index[dim]]) if bias is not None else 0.0)
        if act == "relu":
            v = max(v, 0.0)
        elif act == "lrelu":
            v = v if v > 0 else v * alpha
        v *= gain
        if clamp is not None:
            v = min(max(v, -clamp), clamp)
        out[index] = v
    return out


def stylegan_blur_kernel(scale: float = 1.0) -> np.ndarray:
    """rosinality make_kernel([1, 3, 3, 1]) (normalised outer product) times `scale` (factor**2 when upsampling)."""
    k = np.array([1.0, 3.0, 3.0, 1.0])
    k2 = np.outer(k, k)
    return k2 / k2.sum() * scale


def _odd_kernel(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols))


# (id, input (N, C, H, W), kernel, up (x, y), down (x, y), pad (x0, x1, y0, y1))
UPFIRDN_CASES = [
    # Generator: ModulatedConv2d(upsample) blurs its transposed-conv output: Blur(k*4, pad=(1,1)).
    ("G-upconv-blur", (2, 3, 9, 9), stylegan_blur_kernel(4), (1, 1), (1, 1), (1, 1, 1, 1)),
    # Generator: ToRGB skip Upsample: upfirdn2d(skip, k*4, up=2, pad=(2,1)).
    ("G-torgb-upsample", (2, 3, 4, 4), stylegan_blur_kernel(4), (2, 2), (1, 1), (2, 1, 2, 1)),
    # Discriminator: ConvLayer(downsample, k=3) blurs with pad (2,2) before its stride-2 conv.
    ("D-conv3-blur", (2, 3, 8, 8), stylegan_blur_kernel(), (1, 1), (1, 1), (2, 2, 2, 2)),
    # Discriminator: ResBlock skip ConvLayer(downsample, k=1) blurs with pad (1,1).
    ("D-skip-blur", (2, 3, 8, 8), stylegan_blur_kernel(), (1, 1), (1, 1), (1, 1, 1, 1)),
    # rosinality Downsample module: upfirdn2d(x, k, down=2, pad=(1,1)).
    ("downsample", (2, 3, 8, 8), stylegan_blur_kernel(), (1, 1), (2, 2), (1, 1, 1, 1)),
    # Upsample and downsample at once, odd size.
    ("up2-down2", (1, 2, 5, 5), stylegan_blur_kernel(4), (2, 2), (2, 2), (2, 1, 2, 1)),
    # Odd ones: non-square kernel, different factors per axis, negative (cropping) pads.
    ("nonsquare-kernel", (1, 2, 6, 7), _odd_kernel(3, 5, 0), (1, 1), (1, 1), (2, 2, 1, 1)),
    ("axis-factors", (1, 2, 5, 6), _odd_kernel(4, 3, 1), (3, 1), (1, 2), (1, 2, 0, 3)),
    ("negative-pads", (1, 2, 7, 6), _odd_kernel(3, 3, 2), (2, 2), (1, 1), (-1, -2, 0, -3)),
    ("crop-and-down", (2, 1, 9, 8), _odd_kernel(2, 2, 3), (1, 1), (3, 2), (-2, 1, 1, -1)),
    ("1x1-kernel-up3", (1, 2, 3, 4), _odd_kernel(1, 1, 4), (3, 3), (1, 1), (0, 0, 0, 0)),
]


@pytest.fixture
def kernels_cache(tmp_path, monkeypatch):
    """An empty build cache for this test only."""
    root = tmp_path / "kernels-cache"
    monkeypatch.setenv("FSTRAIN_KERNELS_CACHE", str(root))
    return root
