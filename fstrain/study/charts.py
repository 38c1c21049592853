"""Bar charts with error bars, drawn with PIL (matplotlib is not a dependency of the project)."""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw

PALETTE = ((120, 120, 120), (66, 133, 244), (251, 188, 5), (52, 168, 83), (234, 67, 53), (155, 89, 182),
           (23, 190, 207), (188, 189, 34))


def bar_chart(title: str, groups: Sequence[str], series: Sequence[str],
              means: Sequence[Sequence[float | None]], stds: Sequence[Sequence[float | None]],
              width: int = 900, height: int = 360) -> Image.Image:
    """Grouped bars: `means[g][s]` for group g (x axis) and series s (colour); whiskers at mean ± std.
    None values are left out (shown as 'n/a')."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 10, 30, height - 60
    draw.text((left, 8), title, fill=(0, 0, 0))
    values = [(m or 0.0) + (s or 0.0) for row_m, row_s in zip(means, stds) for m, s in zip(row_m, row_s)
              if m is not None and math.isfinite(m)]
    lowest = min([0.0] + [(m or 0.0) - (s or 0.0) for row_m, row_s in zip(means, stds)
                          for m, s in zip(row_m, row_s) if m is not None and math.isfinite(m)])
    highest = max(values) if values else 1.0
    span = (highest - lowest) or 1.0

    def y_of(v: float) -> float:
        return bottom - (v - lowest) / span * (bottom - top)

    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(0, 0, 0))
    for k in range(5):
        v = lowest + span * k / 4
        y = y_of(v)
        draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((4, y - 6), f"{v:.3g}", fill=(0, 0, 0))
    if lowest < 0:
        draw.line([(left, y_of(0)), (right, y_of(0))], fill=(160, 160, 160))
    group_w = (right - left) / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        draw.text((x0, bottom + 4), group[:18], fill=(0, 0, 0))
        for s in range(len(series)):
            m, sd = means[g][s], stds[g][s]
            x = x0 + s * bar_w
            colour = PALETTE[s % len(PALETTE)]
            if m is None or not math.isfinite(m):
                draw.text((x, bottom - 12), "n/a", fill=colour)
                continue
            draw.rectangle([x, min(y_of(m), y_of(0)), x + bar_w - 2, max(y_of(m), y_of(0))], fill=colour)
            if sd:
                cx = x + bar_w / 2 - 1
                draw.line([(cx, y_of(m - sd)), (cx, y_of(m + sd))], fill=(0, 0, 0), width=1)
                draw.line([(cx - 3, y_of(m - sd)), (cx + 3, y_of(m - sd))], fill=(0, 0, 0))
                draw.line([(cx - 3, y_of(m + sd)), (cx + 3, y_of(m + sd))], fill=(0, 0, 0))
    lx = left
    for s, name in enumerate(series):
        colour = PALETTE[s % len(PALETTE)]
        draw.rectangle([lx, height - 22, lx + 10, height - 12], fill=colour)
        draw.text((lx + 14, height - 24), name, fill=(0, 0, 0))
        lx += 14 + 7 * len(name) + 16
    return image
