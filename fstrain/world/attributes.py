"""The attributes an attribute reader is asked to read off a world image, from the ground truth it was drawn from.

Categorical (identity-level, visible in every domain): hair style (6), glasses, bangs, eye colour (the nearest of
the world's six iris base colours). Continuous: face shape (half-width, half-height, jaw taper, each scaled to
0..1 over the range the world samples it from). Colours (RGB / 255):

- `skin`, `hair`: the identity's own colours (what a stylization should carry over);
- `painted_skin`, `painted_hair`: the colours the image's domain actually painted (its palette). Photo, cartoon,
  illustration and impasto paint a fixed function of the identity's colours; anime re-colours hair in half of
  its views and fantasy re-colours skin hue and hair entirely (from the view's texture seed), so there the
  identity's colour cannot be read from the image and only the painted colour is scored.
"""
from __future__ import annotations

import numpy as np

from fstrain.data.synthetic import HAIR_STYLES, Identity
from fstrain.data.synthetic.params import _EYE_COLOURS

CATEGORIES: dict[str, tuple[str, ...]] = {
    "hair_style": HAIR_STYLES,
    "glasses": ("no", "yes"),
    "bangs": ("no", "yes"),
    "eye_colour": tuple(f"iris{i}" for i in range(len(_EYE_COLOURS))),
}
SHAPE_RANGES: dict[str, tuple[float, float]] = {          # the uniform ranges sample_identity draws from
    "face_half_width": (118.0, 140.0),
    "face_half_height": (166.0, 184.0),
    "jaw_taper": (0.12, 0.42),
}
COLOURS = ("skin", "hair", "painted_skin", "painted_hair")
# Where the identity's own colour is a fixed function of the image (so a reader can recover it).
IDENTITY_COLOUR_DOMAINS = {"skin": ("photo", "cartoon", "anime", "illustration", "impasto"),
                           "hair": ("photo", "cartoon", "illustration", "impasto")}


def eye_colour_class(identity: Identity) -> int:
    base = np.asarray(_EYE_COLOURS, np.float64)
    return int(np.argmin(((base - np.asarray(identity.iris, np.float64)) ** 2).sum(1)))


def targets(identities: list[Identity], metas: list[dict]) -> dict[str, np.ndarray]:
    """Per-image targets: categorical -> (N,) int64, face shape -> (N, 3) in 0..1, colours -> (N, 3) in 0..1."""
    out: dict[str, np.ndarray] = {
        "hair_style": np.array([HAIR_STYLES.index(i.hair_style) for i in identities], np.int64),
        "glasses": np.array([int(i.glasses) for i in identities], np.int64),
        "bangs": np.array([int(i.bangs) for i in identities], np.int64),
        "eye_colour": np.array([eye_colour_class(i) for i in identities], np.int64),
    }
    shape = [[(getattr(i, name) - lo) / (hi - lo) for name, (lo, hi) in SHAPE_RANGES.items()] for i in identities]
    out["face_shape"] = np.asarray(shape, np.float32)
    out["skin"] = np.asarray([i.skin for i in identities], np.float32) / 255
    out["hair"] = np.asarray([i.hair for i in identities], np.float32) / 255
    out["painted_skin"] = np.asarray([m["palette"]["skin"] for m in metas], np.float32) / 255
    out["painted_hair"] = np.asarray([m["palette"]["hair"] for m in metas], np.float32) / 255
    return out


def colour_error(predicted: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error per channel as a fraction of the colour's range in `true` (the world's range there)."""
    span = np.maximum(true.max(0) - true.min(0), 1e-3)
    return float((np.abs(predicted - true) / span).mean())
