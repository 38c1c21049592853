"""Supersampled vector drawing through a face-frame -> pixel transform.

Every shape is filled into an RGB image drawn over black and into a coverage mask, both at `ss` times the
output resolution. Box-downsampling both gives an anti-aliased, premultiplied colour layer plus its alpha,
which the renderer composites over a background computed in numpy (cheaper than drawing gradients at 4x).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .geometry import apply, scale_of

Colour = tuple[int, int, int]


@lru_cache(maxsize=32)
def _unit_circle(n: int) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def ellipse_points(centre, rx: float, ry: float, angle: float = 0.0, n: int = 48) -> np.ndarray:
    pts = _unit_circle(n) * np.array([rx, ry])
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.asarray(centre, dtype=np.float64)


def bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
    """Quadratic Bézier from p0 to p2 with control p1, sampled at n points."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def tapered_stroke(points: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Polygon outlining a polyline whose width varies along it (brows, lashes, brush marks)."""
    pts = np.asarray(points, dtype=np.float64)
    tangent = np.gradient(pts, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * (np.asarray(widths)[:, None] / 2)
    return np.vstack([pts + normal, (pts - normal)[::-1]])


class Painter:
    """Draws face-frame shapes onto one supersampled layer."""

    def __init__(self, width: int, height: int, ss: int):
        self.size = (width, height)
        self.ss = ss
        self.rgb = Image.new("RGB", (width * ss, height * ss), (0, 0, 0))
        self.mask = Image.new("L", (width * ss, height * ss), 0)
        self._draw_rgb = ImageDraw.Draw(self.rgb)
        self._draw_mask = ImageDraw.Draw(self.mask)
        self.m = np.eye(3)
        self.unit = 1.0

    def set_transform(self, face_to_pixels: np.ndarray) -> None:
        """Face frame -> output pixels (continuous, pixel centres at i+0.5). PIL draws pixel centres at integers."""
        to_ss = np.array([[self.ss, 0, -0.5], [0, self.ss, -0.5], [0, 0, 1.0]])
        self.m = to_ss @ face_to_pixels
        self.unit = scale_of(self.m)   # supersampled pixels per template unit

    def _xy(self, points: np.ndarray) -> list[float]:
        return apply(self.m, points).ravel().tolist()

    def _width(self, width: float) -> int:
        return max(1, int(round(width * self.unit)))

    def n_for(self, radius: float) -> int:
        """Enough polygon vertices that a circle of `radius` template units looks round."""
        return int(np.clip(radius * self.unit * 0.6, 10, 120))

    def polygon(self, points: np.ndarray, fill: Colour | None, outline: Colour | None = None,
                width: float = 0.0) -> None:
        xy = self._xy(points)
        if len(xy) < 6:
            return
        if fill is not None:
            self._draw_rgb.polygon(xy, fill=fill)
            self._draw_mask.polygon(xy, fill=255)
        if outline is not None and width > 0:
            self._line_xy(xy + xy[:2], outline, width)

    def line(self, points: np.ndarray, colour: Colour, width: float, closed: bool = False) -> None:
        xy = self._xy(points)
        if closed:
            xy = xy + xy[:2]
        self._line_xy(xy, colour, width)

    def _line_xy(self, xy: list[float], colour: Colour, width: float) -> None:
        w = self._width(width)
        self._draw_rgb.line(xy, fill=colour, width=w)
        self._draw_mask.line(xy, fill=255, width=w)
        if w >= 3:   # round joints and ends (PIL's joint="curve" is far slower, it works in Python)
            r = w / 2 - 0.5
            # thin lines only need round ends; thick ones also need their joints filled
            points = list(zip(xy[0::2], xy[1::2])) if w >= 6 else [(xy[0], xy[1]), (xy[-2], xy[-1])]
            for x, y in points:
                box = [x - r, y - r, x + r, y + r]
                self._draw_rgb.ellipse(box, fill=colour)
                self._draw_mask.ellipse(box, fill=255)

    def ellipse(self, centre, rx: float, ry: float, fill: Colour | None, outline: Colour | None = None,
                width: float = 0.0, angle: float = 0.0) -> None:
        self.polygon(ellipse_points(centre, rx, ry, angle, self.n_for(max(rx, ry))), fill, outline, width)

    def downsampled(self) -> tuple[np.ndarray, np.ndarray]:
        """(premultiplied RGB float32 HxWx3 in 0..1, alpha float32 HxW)."""
        rgb, mask = self.rgb, self.mask
        if self.ss > 1:
            rgb, mask = rgb.reduce(self.ss), mask.reduce(self.ss)
        return (np.asarray(rgb, dtype=np.float32) * (1 / 255.0),
                np.asarray(mask, dtype=np.float32) * (1 / 255.0))
