"""The parameters of a synthetic portrait: who it is (`Identity`) and how this picture shows them (`View`).

Both are plain dataclasses of JSON-friendly values, sampled deterministically from a numpy Generator and
round-tripped through `to_dict`/`from_dict`, so an image's metadata is enough to render it again.

Lengths are in *template units*: the face frame is the FFHQ-512 canvas, where an average face has its five
landmarks on the FFHQ 5-point template (eyes at y≈240, nose tip ≈314, mouth ≈371).
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

RGB = tuple[int, int, int]

DOMAINS: tuple[str, ...] = ("photo", "cartoon", "anime", "fantasy", "illustration", "impasto")
STYLE_DOMAINS: tuple[str, ...] = DOMAINS[1:]
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bob", "bun", "curly", "buzz")

# Anchors of a continuous skin-tone ramp (light to deep); an identity picks a point on it.
_SKIN_RAMP: tuple[RGB, ...] = (
    (255, 226, 204), (241, 196, 166), (226, 172, 134), (198, 136, 100),
    (164, 108, 74), (120, 78, 52), (86, 56, 40),
)
_HAIR_COLOURS: tuple[RGB, ...] = (
    (30, 26, 26), (58, 40, 30), (98, 66, 42), (136, 62, 36), (206, 170, 104),
    (160, 120, 74), (176, 174, 170), (186, 96, 48),
)
_EYE_COLOURS: tuple[RGB, ...] = (
    (92, 58, 34), (56, 36, 24), (122, 96, 52), (72, 112, 74), (74, 112, 168), (112, 128, 138),
)


@dataclass
class Identity:
    """Who the person is: everything that stays the same across views and domains."""
    identity_id: str
    face_half_width: float        # half-width of the face oval
    face_half_height: float       # half-height of the face oval (forehead to chin)
    jaw_taper: float              # 0 = oval, larger = narrower chin
    skin: RGB
    hair_style: str
    hair: RGB
    hair_part: float              # -1..1, where the parting sits
    bangs: bool
    eye_half_spacing: float       # half the distance between eye centres
    eye_y: float
    eye_half_width: float
    eye_height_ratio: float       # almond height / width
    eye_tilt: float               # radians, positive = outer corners up
    iris: RGB
    brow_thickness: float
    brow_raise: float             # distance of brow above eye centre
    brow_arch: float              # 0 = straight, 1 = strongly arched
    nose_tip_y: float
    nose_half_width: float
    mouth_y: float
    mouth_half_width: float
    lip_fullness: float
    lip: RGB
    ear_size: float
    glasses: bool
    glasses_round: bool
    glasses_colour: RGB
    clothes: RGB

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Identity":
        return _from_dict(cls, data)


@dataclass
class View:
    """How this picture shows the identity: pose on the canvas, expression, gaze, light and background."""
    aligned: bool
    rotation_deg: float           # in-plane rotation of the face (unaligned only)
    scale: float                  # face size relative to the aligned rendering (unaligned only)
    offset: tuple[float, float]   # face centre offset from the canvas centre, in output sizes (unaligned only)
    canvas: float                 # canvas side / output size (1 when aligned)
    smile: float                  # 0..1
    eye_openness: float           # 0.6..1
    gaze: tuple[float, float]     # -1..1 each, fraction of the allowed iris travel
    light_angle: float            # radians, direction the light comes from in the image plane
    background: tuple[RGB, RGB]   # two colours of the backdrop gradient
    background_kind: str          # "gradient" | "bokeh" | "window"
    texture_seed: int             # seeds the domain's noise/strokes/ornaments (all deterministic)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "View":
        return _from_dict(cls, data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return round(float(value), 6)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    missing = names - set(data)
    unknown = set(data) - names
    if missing or unknown:
        raise ValueError(f"{cls.__name__} parameters: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return cls(**{k: _tupled(v) for k, v in data.items()})


def _lerp_colour(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return int(r * 255), int(g * 255), int(b * 255)


def sample_identity(rng: np.random.Generator, identity_id: str) -> Identity:
    """Draw one identity. Same generator state -> same identity."""
    t = rng.uniform(0, len(_SKIN_RAMP) - 1)
    i = int(t)
    skin = _lerp_colour(_SKIN_RAMP[i], _SKIN_RAMP[min(i + 1, len(_SKIN_RAMP) - 1)], t - i)
    skin = _jitter(rng, skin, 4)
    lip_base = (int(skin[0] * 0.86 + 20), int(skin[1] * 0.56), int(skin[2] * 0.58))
    lip = _jitter(rng, tuple(min(255, c) for c in lip_base), 6)  # type: ignore[arg-type]
    hair = _jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 6)
    return Identity(
        identity_id=identity_id,
        face_half_width=float(rng.uniform(118, 140)),
        face_half_height=float(rng.uniform(166, 184)),
        jaw_taper=float(rng.uniform(0.12, 0.42)),
        skin=skin,
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hair=hair,
        hair_part=float(rng.uniform(-1, 1)),
        bangs=bool(rng.random() < 0.35),
        eye_half_spacing=float(rng.uniform(58, 68)),
        eye_y=float(rng.uniform(234, 246)),
        eye_half_width=float(rng.uniform(24, 29)),
        eye_height_ratio=float(rng.uniform(0.40, 0.54)),
        eye_tilt=float(rng.uniform(-0.10, 0.12)),
        iris=_jitter(rng, _EYE_COLOURS[rng.integers(len(_EYE_COLOURS))], 6),
        brow_thickness=float(rng.uniform(6, 11)),
        brow_raise=float(rng.uniform(30, 40)),
        brow_arch=float(rng.uniform(0, 1)),
        nose_tip_y=float(rng.uniform(304, 322)),
        nose_half_width=float(rng.uniform(19, 27)),
        mouth_y=float(rng.uniform(364, 378)),
        mouth_half_width=float(rng.uniform(46, 60)),
        lip_fullness=float(rng.uniform(0.7, 1.2)),
        lip=lip,
        ear_size=float(rng.uniform(0.85, 1.15)),
        glasses=bool(rng.random() < 0.25),
        glasses_round=bool(rng.random() < 0.5),
        glasses_colour=_jitter(rng, ((30, 30, 34), (120, 70, 40), (150, 150, 160))[rng.integers(3)], 5),
        clothes=_hsv(rng.random(), rng.uniform(0.25, 0.7), rng.uniform(0.3, 0.85)),
    )


def sample_view(rng: np.random.Generator, aligned: bool = True) -> View:
    """Draw one view. Unaligned views rotate, rescale and move the face on a 1.5x canvas."""
    hue = rng.random()
    bg1 = _hsv(hue, rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.9))
    bg2 = _hsv(hue + rng.uniform(-0.12, 0.12), rng.uniform(0.1, 0.4), rng.uniform(0.25, 0.6))
    if aligned:
        pose = dict(rotation_deg=0.0, scale=1.0, offset=(0.0, 0.0), canvas=1.0)
    else:
        pose = dict(rotation_deg=float(rng.uniform(-30, 30)), scale=float(rng.uniform(0.55, 0.85)),
                    offset=(float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))), canvas=1.5)
    return View(
        aligned=aligned, **pose,
        smile=float(rng.uniform(0, 1)),
        eye_openness=float(rng.uniform(0.65, 1.0)),
        gaze=(float(rng.uniform(-1, 1)), float(rng.uniform(-0.6, 0.6))),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        background=(bg1, bg2),
        background_kind=("gradient", "bokeh", "window")[rng.integers(3)],
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def identity_rng(seed: int, index: int) -> np.random.Generator:
    """Identity `index` of dataset `seed`: the same person in every domain rendered from that seed."""
    return np.random.default_rng([seed, index, 0])


def view_rng(seed: int, index: int, aligned: bool) -> np.random.Generator:
    return np.random.default_rng([seed, index, 1, int(aligned)])


class GaussianDraws:
    """A stand-in for the numpy Generator that `sample_identity` / `sample_view` draw from, fed by a vector `u`
    of standard normals: each draw consumes the next entry, through the normal CDF for uniform / integer draws.

    With u ~ N(0, I) the parameters have exactly the world's distribution, and they are a (piecewise) smooth
    function of u. A generator trained with z = u therefore has the world's own latent space as its Z
    (fstrain.world.generator): random z are world people, and each z has its rendering as a target.
    """

    def __init__(self, u: np.ndarray):
        self.u = np.asarray(u, np.float64).reshape(-1)
        self.used = 0

    def _next(self) -> float:
        if self.used >= len(self.u):
            raise ValueError(f"GaussianDraws: the sampler asked for more than the {len(self.u)} normals given")
        value = float(self.u[self.used])
        self.used += 1
        return value

    def _uniform01(self) -> float:
        p = 0.5 * (1.0 + math.erf(self._next() / math.sqrt(2.0)))
        return min(max(p, 1e-12), 1.0 - 1e-12)

    def random(self) -> float:
        return self._uniform01()

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * self._uniform01()

    def normal(self, loc: float = 0.0, scale: float = 1.0) -> float:
        return loc + scale * self._next()

    def integers(self, low: int, high: int | None = None) -> int:
        low, high = (0, low) if high is None else (low, high)
        return low + min(int((high - low) * self._uniform01()), high - low - 1)


def _draws_used(sample) -> int:
    draws = GaussianDraws(np.zeros(256))
    sample(draws)
    return draws.used


IDENTITY_DRAWS: int = _draws_used(lambda d: sample_identity(d, ""))   # type: ignore[arg-type]
VIEW_DRAWS: int = _draws_used(lambda d: sample_view(d, True))         # type: ignore[arg-type]
LATENT_DRAWS: int = IDENTITY_DRAWS + VIEW_DRAWS


def params_from_normal(u: np.ndarray, identity_id: str = "") -> tuple[Identity, View]:
    """The aligned (identity, view) that the first LATENT_DRAWS entries of `u` select (see GaussianDraws)."""
    u = np.asarray(u, np.float64).reshape(-1)
    if len(u) < LATENT_DRAWS:
        raise ValueError(f"params_from_normal needs {LATENT_DRAWS} normals, got {len(u)}")
    identity = sample_identity(GaussianDraws(u[:IDENTITY_DRAWS]), identity_id)  # type: ignore[arg-type]
    view = sample_view(GaussianDraws(u[IDENTITY_DRAWS:LATENT_DRAWS]), True)      # type: ignore[arg-type]
    return identity, view
