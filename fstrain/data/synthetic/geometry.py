"""Where things are: per-domain face proportions, the five landmarks, and face-frame -> pixel transforms.

The face frame is the FFHQ-512 canvas (template units). A rendering places it on the output with a 2x3
similarity `M` (face frame -> continuous pixel coordinates, pixel (i, j) covering [i, i+1) x [j, j+1)).
The aligned placement is exactly what the FFHQ 5-point quad recipe computes from the face's own landmarks,
so `fstrain.data.align.ffhq_align` applied to any unaligned rendering reproduces the aligned one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fstrain.data.align import ffhq_transform

from .params import Identity, View

LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
FACE_CENTRE_X = 256.0
FACE_CENTRE_Y = 282.0   # centre of the face oval in the face frame


@dataclass(frozen=True)
class StyleGeometry:
    """How a domain exaggerates proportions (styles change shape, not only texture)."""
    eye_width: float = 1.0
    eye_height: float = 1.0
    iris: float = 1.0          # iris radius relative to the eye half-width ratio of photos
    eye_drop: float = 0.0      # eyes sit lower by this many template units
    eye_tilt: float = 0.0      # added tilt (radians)
    nose: float = 1.0
    mouth: float = 1.0
    face_width: float = 1.0
    face_height: float = 1.0
    jaw_taper: float = 0.0     # added chin narrowing
    outline: float = 0.0       # outline width in template units (0 = none)
    pointed_ears: bool = False


STYLE_GEOMETRY: dict[str, StyleGeometry] = {
    "photo": StyleGeometry(),
    "cartoon": StyleGeometry(eye_width=1.25, eye_height=1.55, iris=1.15, nose=1.25, mouth=1.12,
                             face_width=1.07, face_height=0.97, jaw_taper=-0.05, outline=7.0),
    "anime": StyleGeometry(eye_width=1.35, eye_height=2.1, iris=1.45, eye_drop=12.0, nose=0.45, mouth=0.55,
                           face_width=0.95, face_height=1.0, jaw_taper=0.32, outline=3.5),
    "fantasy": StyleGeometry(eye_width=1.12, eye_height=0.95, iris=1.1, eye_tilt=0.16, nose=0.9, mouth=0.92,
                             face_width=0.93, face_height=1.06, jaw_taper=0.2, outline=2.0, pointed_ears=True),
    "illustration": StyleGeometry(eye_width=1.05, eye_height=1.05, face_width=0.97, jaw_taper=0.1, outline=3.2),
    "impasto": StyleGeometry(eye_width=1.05, eye_height=1.1, nose=1.05, face_width=1.04, jaw_taper=-0.04),
}


@dataclass(frozen=True)
class FaceLayout:
    """Resolved geometry of one face in the face frame: the numbers every drawing routine reads."""
    cx: float
    cy: float
    half_width: float
    half_height: float
    jaw_taper: float
    eye_centres: np.ndarray      # (2, 2): left (image-left), right
    eye_half_width: float
    eye_half_height: float
    eye_tilt: float
    iris_radius: float
    gaze_offset: np.ndarray      # (2,) iris offset from the eye centre
    nose_tip: np.ndarray         # (2,)
    nose_half_width: float
    mouth_corners: np.ndarray    # (2, 2): left, right
    mouth_centre_drop: float     # how far the lip seam's middle sits below the corners (smile)
    lip_fullness: float
    geometry: StyleGeometry

    @property
    def landmarks(self) -> np.ndarray:
        """(5, 2): eye centres, nose tip, mouth corners — in the face frame."""
        return np.vstack([self.eye_centres, self.nose_tip[None], self.mouth_corners])


def face_layout(identity: Identity, view: View, domain: str) -> FaceLayout:
    g = STYLE_GEOMETRY[domain]
    cx = FACE_CENTRE_X
    eye_y = identity.eye_y + g.eye_drop
    eye_hw = identity.eye_half_width * g.eye_width
    eye_hh = eye_hw * identity.eye_height_ratio * g.eye_height / g.eye_width * view.eye_openness
    iris_r = identity.eye_half_width * 0.46 * g.iris * min(g.eye_width, 1.3)
    # The iris may travel only so far that the eye centre stays on the pupil (radius 0.5 * iris).
    travel = 0.28 * iris_r
    gaze = np.array([view.gaze[0] * travel, view.gaze[1] * travel * 0.6])
    eye_centres = np.array([[cx - identity.eye_half_spacing, eye_y], [cx + identity.eye_half_spacing, eye_y]])
    smile = view.smile
    mouth_hw = identity.mouth_half_width * g.mouth * (1.0 + 0.14 * smile)
    mouth_y = identity.mouth_y - 7.0 * smile * g.mouth
    nose_y = identity.nose_tip_y if g.nose >= 1 else eye_y + (identity.nose_tip_y - eye_y) * (0.7 + 0.3 * g.nose)
    return FaceLayout(
        cx=cx, cy=FACE_CENTRE_Y,
        half_width=identity.face_half_width * g.face_width,
        half_height=identity.face_half_height * g.face_height,
        jaw_taper=float(np.clip(identity.jaw_taper + g.jaw_taper, 0.0, 0.8)),
        eye_centres=eye_centres,
        eye_half_width=eye_hw, eye_half_height=eye_hh,
        eye_tilt=identity.eye_tilt + g.eye_tilt,
        iris_radius=iris_r, gaze_offset=gaze,
        nose_tip=np.array([cx, nose_y]),
        nose_half_width=identity.nose_half_width * g.nose,
        mouth_corners=np.array([[cx - mouth_hw, mouth_y], [cx + mouth_hw, mouth_y]]),
        mouth_centre_drop=(3.0 + 14.0 * smile) * g.mouth,
        lip_fullness=identity.lip_fullness,
        geometry=g,
    )


# ---------------------------------------------------------------------------------------------- transforms
def similarity(rotation_deg: float, scale: float, centre_from: np.ndarray, centre_to: np.ndarray) -> np.ndarray:
    """3x3: rotate/scale about `centre_from`, then move that point to `centre_to`."""
    a = math.radians(rotation_deg)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = np.asarray(centre_to) - r @ np.asarray(centre_from)
    return m


def face_to_pixels(layout: FaceLayout, view: View, size: int) -> tuple[np.ndarray, int]:
    """Placement of the face on its canvas: (3x3 face frame -> pixels, canvas side in pixels)."""
    aligned = ffhq_transform(layout.landmarks, size)   # the FFHQ crop of fstrain.data.align: one recipe
    if view.aligned:
        return aligned, size
    canvas = int(round(size * view.canvas))
    to = np.array([canvas / 2 + view.offset[0] * size, canvas / 2 + view.offset[1] * size])
    return similarity(view.rotation_deg, view.scale, np.array([size / 2, size / 2]), to) @ aligned, canvas


def apply(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:2, :2].T + m[:2, 2]


def scale_of(m: np.ndarray) -> float:
    return float(math.sqrt(abs(np.linalg.det(m[:2, :2]))))
