"""Per-pixel effects in numpy: lighting, backgrounds, hatching, brush strokes, noise.

Anything that must survive alignment (lighting, hatching, backgrounds of single portraits) is a function of
face-frame coordinates, so a rotated/scaled rendering carries the same pattern as the aligned one.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .geometry import FaceLayout
from .palette import Palette


@lru_cache(maxsize=16)
def _pixel_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    xs.flags.writeable = False
    ys.flags.writeable = False
    return xs, ys


def frame_coords(frame_to_pixels: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame coordinates (u, v) of every pixel centre, each HxW float32."""
    inv = np.linalg.inv(frame_to_pixels).astype(np.float32)
    xs, ys = _pixel_centres(width, height)
    return inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]


def c01(colour) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) / 255.0


# ------------------------------------------------------------------------------------------------ light
def lambert(u: np.ndarray, v: np.ndarray, L: FaceLayout, light_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse term of a head-sized ellipsoid lit from `light_angle`; returns (lambert, facing nz)."""
    nx = (u - L.cx) / (L.half_width * 1.15)
    ny = (v - (L.cy - 0.08 * L.half_height)) / (L.half_height * 1.12)
    r2 = nx * nx + ny * ny
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    outside = np.maximum(np.sqrt(r2), 1.0)
    light = np.array([math.cos(light_angle) * 0.62, math.sin(light_angle) * 0.62, 0.78], dtype=np.float32)
    light /= np.linalg.norm(light)
    lam = (nx / outside) * light[0] + (ny / outside) * light[1] + nz * light[2]
    return np.clip(lam, 0.0, 1.0), nz


def soft_blobs(u: np.ndarray, v: np.ndarray, centres: list, sigma: float) -> np.ndarray:
    out = np.zeros_like(u)
    for cx, cy in centres:
        out += np.exp(-((u - cx) ** 2 + (v - cy) ** 2) * (1.0 / (2 * sigma * sigma)))
    return out


def shade_face_layer(domain: str, rgb: np.ndarray, alpha: np.ndarray, u: np.ndarray, v: np.ndarray,
                     L: FaceLayout, pal: Palette, light_angle: float, px_per_unit: float) -> np.ndarray:
    """Domain lighting on one premultiplied face layer."""
    if domain == "cartoon":
        return rgb
    lam, nz = lambert(u, v, L, light_angle)
    if domain in ("photo", "impasto"):
        shade = 0.62 + 0.48 * lam
        rgb = rgb * shade[..., None]
        if domain == "photo":     # cheeks: a soft flush, premultiplied by coverage
            cheeks = [(L.eye_centres[0, 0] - 8, L.nose_tip[1] + 8), (L.eye_centres[1, 0] + 8, L.nose_tip[1] + 8)]
            w = (0.22 * soft_blobs(u, v, cheeks, 20.0))[..., None]
            rgb = rgb * (1 - w) + (c01(pal.blush) * shade[..., None]) * w * alpha[..., None]
        return rgb
    if domain == "anime":         # cel shading: one hard-edged, slightly violet shadow tone
        k = np.clip((lam - 0.42) * 30.0, 0.0, 1.0)[..., None]
        shadow = np.array([0.82, 0.76, 0.88], dtype=np.float32)
        return rgb * (shadow + (1 - shadow) * k)
    if domain == "fantasy":       # soft light plus a coloured rim where the head turns away
        rgb = rgb * (0.55 + 0.55 * lam)[..., None]
        rim = (np.clip(1.0 - nz, 0, 1) ** 3 * (1.0 - lam) * 0.55)[..., None]
        return rgb + c01(pal.iris) * rim * alpha[..., None]
    if domain == "illustration":  # ink hatching in the shadows, cross-hatching in the deepest ones
        ink = c01(pal.line or (30, 30, 40))
        period, half_width = 10.0, 1.2
        hatch = np.zeros_like(u)
        for direction, limit in ((u + v, 0.45), (u - v, 0.22)):
            d = np.abs(np.mod(direction * (1 / period), 1.0) - 0.5) * (period / math.sqrt(2))
            line = np.clip((half_width - d) * px_per_unit + 0.5, 0.0, 1.0)
            hatch = np.maximum(hatch, line * np.clip((limit - lam) * 12.0, 0.0, 1.0))
        w = (hatch * 0.6)[..., None]
        return rgb * (1 - w) + ink * w * alpha[..., None]
    raise ValueError(domain)


# ------------------------------------------------------------------------------------------- backgrounds
def background(domain: str, kind: str, pal: Palette, u: np.ndarray, v: np.ndarray, px_per_unit: float,
               seed: int) -> np.ndarray:
    """HxWx3 backdrop in 0..1 from backdrop-frame coordinates (the 512-unit face frame for portraits)."""
    rng = np.random.default_rng([seed, 11])
    bg1, bg2 = c01(pal.background[0]), c01(pal.background[1])
    if domain == "fantasy":       # night-sky radial glow
        d = np.sqrt((u - 256) ** 2 + (v - 230) ** 2) * (1 / 420.0)
        t = np.clip(d, 0, 1)[..., None]
        return bg1 * (1 - t) + bg2 * t
    if domain == "cartoon":       # flat colour with a halo disc behind the head
        d = np.sqrt((u - 256) ** 2 + (v - 250) ** 2)
        disc = np.clip((235.0 - d) * px_per_unit + 0.5, 0, 1)[..., None]
        return bg2 * (1 - disc) + bg1 * disc
    t = np.clip((v + 0.35 * u) * (1 / 800.0) + 0.05, 0, 1)[..., None]
    out = bg1 * (1 - t) + bg2 * t
    if domain == "anime":         # diagonal light shafts
        shafts = (np.sin((u - 0.6 * v) * 0.018) > 0.55).astype(np.float32) * 0.12
        return out + shafts[..., None] * (1 - out)
    if domain == "illustration":  # a loose wash behind the head
        d = np.sqrt((u - 256) ** 2 + ((v - 260) * 0.85) ** 2)
        wash = np.clip((250.0 + 30 * np.sin(np.arctan2(v - 260, u - 256) * 5) - d) * 0.05, 0, 1) * 0.8
        return c01(pal.background[0]) * (1 - wash[..., None]) + c01(pal.background[1]) * wash[..., None]
    if kind == "bokeh" or domain == "impasto":
        light = np.minimum(1.0, bg1 * 1.25 + 0.08)
        w = np.zeros_like(u)
        for _ in range(7):
            cx, cy, r = rng.uniform(-250, 760), rng.uniform(-250, 760), rng.uniform(30, 90)
            d = np.sqrt((u - cx) ** 2 + (v - cy) ** 2)
            w = np.maximum(w, np.clip((r - d) / (0.25 * r), 0, 1) * rng.uniform(0.25, 0.6))
        out = out * (1 - w[..., None]) + light * w[..., None]
    elif kind == "window":
        side = 1.0 if rng.random() < 0.5 else -1.0
        w = np.clip((side * (u - 256) - 120) * (1 / 90.0), 0, 1) * np.clip((330 - v) * (1 / 90.0), 0, 1)
        out = out * (1 - 0.6 * w[..., None]) + 0.6 * w[..., None] * np.array([0.97, 0.96, 0.92], np.float32)
    return out


# ---------------------------------------------------------------------------------------- final touches
def to_image(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), "RGB")


def finish(domain: str, rgb: np.ndarray, seed: int) -> Image.Image:
    """Whole-image treatment after compositing: sensor noise, bloom, paper grain or paint."""
    rng = np.random.default_rng([seed, 13])
    h, w = rgb.shape[:2]
    scale = max(h, w) / 256.0
    if domain == "photo":
        radius = 0.45 * scale
        # a lens-like softening; below one pixel a 3x3 kernel is the same blur at a fraction of the cost
        soften = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 8, 2, 1, 2, 1], 20) if radius < 1 \
            else ImageFilter.GaussianBlur(radius)
        img = to_image(rgb).filter(soften)
        out = np.asarray(img, dtype=np.float32) * (1 / 255.0)
        out = out + (0.014 * _noise(rng, h, w))[..., None]
        return to_image(out)
    if domain == "fantasy":
        # bloom: blur the highlights at quarter resolution and add them back
        bright = to_image(np.clip(rgb - 0.6, 0, 1) * 2.0).reduce(4).filter(ImageFilter.GaussianBlur(scale))
        bloom = np.asarray(bright.resize((w, h), Image.BILINEAR), dtype=np.float32)
        return to_image(rgb + bloom * (0.5 / 255.0))
    if domain == "illustration":
        grain = _smooth_noise(rng, h, w, cells=48) * 0.025 + _noise(rng, h, w) * 0.012
        return to_image(rgb * (1.0 - np.abs(grain))[..., None])
    if domain == "impasto":
        return _paint(rgb, rng)
    return to_image(rgb)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.BICUBIC))


@lru_cache(maxsize=8)
def _noise_tile(h: int, w: int) -> np.ndarray:
    """A fixed (seeded) Gaussian noise tile, larger than the image; images take shifted windows of it."""
    tile = np.random.default_rng(20261124).standard_normal((h + 64, w + 64), dtype=np.float32)
    tile.flags.writeable = False
    return tile


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    y, x = rng.integers(0, 64, size=2)
    return _noise_tile(h, w)[y:y + h, x:x + w]


@lru_cache(maxsize=6)
def _stroke_tile(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brush strokes laid once (fixed seed) over a side x side tile.

    Returns (dy, dx, height): for every pixel, the offset to the centre of the stroke covering it (the
    colour it is painted with), and a bristle height map for the paint relief."""
    rng = np.random.default_rng(1234)
    unit = side / 256.0
    owner = Image.new("I", (side, side), 0)
    height = Image.new("L", (side, side), 128)
    draw_owner, draw_height = ImageDraw.Draw(owner), ImageDraw.Draw(height)
    step = 3.4 * unit
    n = int(side / step) + 1
    ys, xs = np.mgrid[0:n, 0:n] * step
    centres = np.stack([ys.ravel(), xs.ravel()], 1) + rng.uniform(0, step, size=(n * n, 2))
    centres = centres[rng.permutation(len(centres))]
    angles = _smooth_noise(rng, side, side, cells=5) * 0.9 + 0.5
    length, width = 6.5 * unit, max(2, int(round(3.4 * unit)))
    for k, (cy, cx) in enumerate(centres, start=1):
        a = float(angles[min(int(cy), side - 1), min(int(cx), side - 1)] + rng.normal(0, 0.15))
        dx, dy = math.cos(a) * length, math.sin(a) * length
        draw_owner.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=k, width=width)
        nx, ny = -math.sin(a), math.cos(a)
        for j in range(3):     # bristle ridges along the stroke
            off = (j - 1) * width / 3.0
            draw_height.line((cx - dx + nx * off, cy - dy + ny * off, cx + dx + nx * off, cy + dy + ny * off),
                             fill=int(rng.integers(60, 220)), width=max(1, width // 3))
    idx = np.asarray(owner, dtype=np.int64)
    gy, gx = np.mgrid[0:side, 0:side]
    cy = np.where(idx > 0, centres[np.maximum(idx - 1, 0), 0], gy)
    cx = np.where(idx > 0, centres[np.maximum(idx - 1, 0), 1], gx)
    dy, dx = np.round(cy - gy).astype(np.int16), np.round(cx - gx).astype(np.int16)
    h = np.asarray(height, dtype=np.float32) / 255.0
    for arr in (dy, dx, h):
        arr.flags.writeable = False
    return dy, dx, h


def _paint(rgb: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Impasto: each pixel takes the colour at the centre of the brush stroke covering it (unless that stroke
    would cross a feature edge), colour is posterised, and the bristle relief is lit from the top left."""
    h, w = rgb.shape[:2]
    dy, dx, height = _stroke_tile(max(h, w))
    oy, ox = (int(v) for v in rng.integers(0, max(h, w), size=2))
    dy, dx, height = (np.roll(a, (oy, ox), axis=(0, 1))[:h, :w] for a in (dy, dx, height))
    ys, xs = np.mgrid[0:h, 0:w]
    src = rgb[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
    similar = (np.abs(src - rgb).sum(-1) < 0.3)[..., None]
    painted = np.where(similar, src, rgb)
    levels = 7.0
    painted = np.round(np.clip(painted, 0, 1) * levels) / levels
    relief = np.zeros_like(height)
    relief[1:-1, 1:-1] = (height[:-2, 1:-1] - height[2:, 1:-1]) + (height[1:-1, :-2] - height[1:-1, 2:])
    return to_image(painted * (1.0 + 0.16 * relief)[..., None])
