"""Per-domain colours: the same identity's skin, hair and eyes as each style would paint them."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, fields

import numpy as np

from .params import RGB, Identity, View

PAPER: RGB = (246, 241, 228)


def mul(c: RGB, k: float) -> RGB:
    return tuple(int(np.clip(round(v * k), 0, 255)) for v in c)  # type: ignore[return-value]


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def to_hsv(c: RGB) -> tuple[float, float, float]:
    return colorsys.rgb_to_hsv(*(v / 255.0 for v in c))


def saturate(c: RGB, s_mul: float, v_mul: float = 1.0, v_add: float = 0.0) -> RGB:
    h, s, v = to_hsv(c)
    return hsv(h, s * s_mul, v * v_mul + v_add)


@dataclass(frozen=True)
class Palette:
    skin: RGB
    skin_dark: RGB
    hair: RGB
    hair_dark: RGB
    hair_light: RGB
    brow: RGB
    iris: RGB
    iris_dark: RGB
    pupil: RGB
    sclera: RGB
    lip: RGB
    lip_dark: RGB
    blush: RGB
    clothes: RGB
    clothes_dark: RGB
    glasses: RGB
    line: RGB | None          # outline colour; None = no outlines (photo, impasto)
    accent: RGB               # ornaments
    background: tuple[RGB, RGB]

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = [list(x) for x in v] if f.name == "background" else (list(v) if v is not None else None)
        return out


def _derived(skin: RGB, hair: RGB, iris: RGB, lip: RGB, clothes: RGB, glasses: RGB, line: RGB | None,
             accent: RGB, background: tuple[RGB, RGB], pupil: RGB = (16, 12, 14),
             sclera: RGB = (240, 236, 230)) -> Palette:
    return Palette(
        skin=skin, skin_dark=mul(skin, 0.74), hair=hair, hair_dark=mul(hair, 0.62),
        hair_light=mix(hair, (255, 250, 240), 0.3), brow=mix(mul(hair, 0.8), (40, 30, 28), 0.35),
        iris=iris, iris_dark=mul(iris, 0.55), pupil=pupil, sclera=sclera, lip=lip, lip_dark=mul(lip, 0.55),
        blush=mix(skin, (232, 110, 120), 0.35), clothes=clothes, clothes_dark=mul(clothes, 0.7),
        glasses=glasses, line=line, accent=accent, background=background,
    )


def domain_palette(identity: Identity, view: View, domain: str) -> Palette:
    """Colours of `identity` in `domain`; random choices come from the view's texture seed."""
    rng = np.random.default_rng([view.texture_seed, 7])
    i = identity
    bg_h, bg_s, bg_v = to_hsv(view.background[0])
    if domain == "photo":
        return _derived(i.skin, i.hair, i.iris, i.lip, i.clothes, i.glasses_colour, None, (214, 176, 90),
                        view.background)
    if domain == "cartoon":
        return _derived(
            saturate(i.skin, 1.25, 1.0, 0.06), saturate(i.hair, 1.35, 1.1, 0.04), saturate(i.iris, 1.5, 1.2),
            saturate(i.lip, 1.5, 1.05), saturate(i.clothes, 1.5, 1.05, 0.1), i.glasses_colour, (34, 24, 30),
            (250, 210, 60), (hsv(bg_h, 0.35, 0.98), hsv(bg_h + 0.05, 0.55, 0.9)))
    if domain == "anime":
        natural = rng.random() < 0.5
        hair = saturate(i.hair, 1.3, 1.1, 0.05) if natural else hsv(
            rng.choice([0.92, 0.6, 0.75, 0.08, 0.5, 0.0]), rng.uniform(0.35, 0.7), rng.uniform(0.7, 0.95))
        iris = hsv(rng.random(), rng.uniform(0.55, 0.85), rng.uniform(0.6, 0.9))
        return _derived(
            mix(i.skin, (255, 234, 222), 0.6), hair, iris, mix(i.lip, (230, 120, 120), 0.5),
            saturate(i.clothes, 1.2, 1.05, 0.08), i.glasses_colour, mul(saturate(hair, 1.2), 0.35),
            (255, 215, 120), (hsv(bg_h, 0.18, 1.0), hsv(bg_h + 0.1, 0.3, 0.92)))
    if domain == "fantasy":
        skin_h = float(rng.choice([0.55, 0.33, 0.76, 0.12, 0.9]))
        lum = to_hsv(i.skin)[2]
        skin = hsv(skin_h, rng.uniform(0.25, 0.45), 0.45 + 0.5 * lum)
        hair = hsv(skin_h + rng.uniform(0.3, 0.6), rng.uniform(0.5, 0.9), rng.uniform(0.7, 1.0))
        glow = hsv(skin_h + 0.5 + rng.uniform(-0.1, 0.1), 0.85, 1.0)
        bg_hue = skin_h + rng.uniform(0.1, 0.3)
        return _derived(
            skin, hair, glow, hsv(skin_h + 0.8, 0.6, 0.55), hsv(bg_hue + 0.4, 0.6, 0.5), (214, 180, 80),
            mul(hsv(skin_h, 0.6, 0.5), 0.5), (240, 200, 90), (hsv(bg_hue, 0.7, 0.32), hsv(bg_hue + 0.08, 0.85, 0.08)),
            pupil=(12, 6, 24), sclera=hsv(skin_h, 0.12, 0.95))
    if domain == "illustration":
        wash = lambda c, t=0.5: mix(saturate(c, 0.8), PAPER, t)  # noqa: E731 - a tiny local colour rule
        return _derived(
            wash(i.skin, 0.45), wash(i.hair, 0.3), wash(i.iris, 0.2), wash(i.lip, 0.35), wash(i.clothes, 0.5),
            (40, 38, 46), (30, 28, 38), (190, 150, 70), (PAPER, mix(PAPER, hsv(bg_h, 0.4, 0.85), 0.35)),
            pupil=(24, 22, 30), sclera=PAPER)
    if domain == "impasto":
        return _derived(
            saturate(i.skin, 1.15, 1.0, 0.03), saturate(i.hair, 1.3), saturate(i.iris, 1.3), saturate(i.lip, 1.3),
            saturate(i.clothes, 1.4), i.glasses_colour, None, (220, 170, 60),
            (hsv(bg_h + 0.05, 0.45, 0.75), hsv(bg_h - 0.08, 0.6, 0.4)))
    raise ValueError(f"unknown domain {domain!r}; choose one of photo, cartoon, anime, fantasy, illustration, impasto")
