"""Draws one portrait's vector shapes in the face frame, back to front, the way `domain` would draw them."""
from __future__ import annotations

import math

import numpy as np

from .geometry import FaceLayout
from .painter import Painter, bezier, ellipse_points, tapered_stroke
from .palette import Palette, mix, mul
from .params import Identity, View

BEYOND_BOTTOM = 620.0   # shoulders run off the bottom of the aligned frame


def face_outline(L: FaceLayout, n: int = 72, grow: float = 0.0) -> np.ndarray:
    """Oval forehead, cheeks narrowing to the chin by `jaw_taper`."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    lower = np.clip(s, 0, None)
    x = np.sign(c) * np.abs(c) ** 0.85 * (1 - L.jaw_taper * lower ** 1.6)
    y = np.where(s > 0, s, s * 0.97)
    return np.stack([L.cx + (L.half_width + grow) * x, L.cy + (L.half_height + grow) * y], axis=1)


def _skull(L: FaceLayout) -> tuple[float, float, float, float]:
    """Ellipse (cx, cy, rx, ry) of the top of the head, which hair covers."""
    return L.cx, L.cy - 0.15 * L.half_height, L.half_width * 1.12, L.half_height * 1.0


def _outline(pal: Palette, L: FaceLayout) -> tuple:
    return (pal.line, L.geometry.outline) if pal.line is not None else (None, 0.0)


# ------------------------------------------------------------------------------------------------- hair
def _hairline(L: FaceLayout, identity: Identity, domain: str, rng: np.random.Generator) -> np.ndarray:
    """Lower edge of the front hair, from the right temple to the left one."""
    eye_y = float(L.eye_centres[0, 1])
    a = L.half_width
    xs = np.linspace(1.0, -1.0, 25)
    if identity.hair_style == "buzz":     # clipped short: a high, even hairline, never a fringe or a parting
        base = eye_y - 100 + 40 * np.abs(xs) ** 2
    elif identity.bangs or domain == "anime":
        base = eye_y - 52 - 10 * (domain == "anime") + 18 * np.abs(xs) ** 2
        if domain in ("anime", "cartoon"):      # spiky fringe
            base = base - np.where(np.arange(25) % 2 == 1, 0, 26)
    else:
        part_x = identity.hair_part * 0.55
        base = eye_y - 112 + 62 * np.abs(xs) ** 1.7 - 26 * np.clip(1 - np.abs(xs - part_x) / 0.5, 0, 1)
    pts = np.stack([L.cx + xs * a * 0.98, base], axis=1)
    side = eye_y + 12
    return np.vstack([[L.cx + a * 0.99, side], pts, [L.cx - a * 0.99, side]])


def _skull_arc(L: FaceLayout, bottom_y: float, bump: float = 0.0, n: int = 40, tight: bool = False) -> np.ndarray:
    """Skull ellipse points from the left side (at bottom_y) over the top to the right side; `tight` hugs the
    head (a buzz cut adds no volume), about 2 px narrower and lower at 64 px than a hair cap."""
    sx, sy, rx, ry = _skull(L)
    if tight:
        rx, ry = rx * 0.9, ry * 0.9
    t0 = math.asin(np.clip((bottom_y - sy) / ry, -1, 1))
    t = np.linspace(math.pi - t0, 2 * math.pi + t0, n)
    r = 1 + bump * np.sin(t * 17) ** 2
    return np.stack([sx + rx * r * np.cos(t), sy + ry * r * np.sin(t)], axis=1)


def draw_back_hair(p: Painter, L: FaceLayout, identity: Identity, pal: Palette) -> None:
    line, width = _outline(pal, L)
    sx, sy, rx, ry = _skull(L)
    style = identity.hair_style
    if style == "long":
        top = _skull_arc(L, L.cy, n=30)
        fall = np.array([[L.cx + rx * 1.22, L.cy + 90], [L.cx + rx * 1.3, BEYOND_BOTTOM],
                         [L.cx - rx * 1.3, BEYOND_BOTTOM], [L.cx - rx * 1.22, L.cy + 90]])
        p.polygon(np.vstack([top, fall]), pal.hair_dark, line, width)
    elif style == "bob":
        top = _skull_arc(L, L.cy, n=30)
        bottom = float(L.mouth_corners[0, 1]) + 40
        p.polygon(np.vstack([top, [[L.cx + rx * 1.14, bottom], [L.cx - rx * 1.14, bottom]]]), pal.hair_dark,
                  line, width)
    elif style == "curly":
        t = np.linspace(0, 2 * math.pi, 90, endpoint=False)
        r = rx * 1.38 * (1 + 0.045 * np.sin(t * 15))
        p.polygon(np.stack([L.cx + r * np.cos(t), sy + 10 + r * 0.95 * np.sin(t)], axis=1), pal.hair,
                  line, width)
    elif style == "bun":
        p.ellipse((L.cx, sy - ry * 0.98), 58, 50, pal.hair, line, width)


def draw_front_hair(p: Painter, L: FaceLayout, identity: Identity, pal: Palette, domain: str,
                    rng: np.random.Generator) -> None:
    line, width = _outline(pal, L)
    eye_y = float(L.eye_centres[0, 1])
    style = identity.hair_style
    bump = 0.05 if style == "curly" else 0.0
    colour = mix(pal.hair, pal.skin, 0.45) if style == "buzz" else pal.hair
    cap = np.vstack([_skull_arc(L, eye_y + 12, bump, tight=style == "buzz"), _hairline(L, identity, domain, rng)])
    p.polygon(cap, colour, line, width)
    if style in ("long", "bob"):        # locks falling beside the cheeks, in front of the shoulders
        bottom = BEYOND_BOTTOM if style == "long" else float(L.mouth_corners[0, 1]) + 40
        for side in (-1, 1):
            outer = L.cx + side * L.half_width * 1.2
            inner = L.cx + side * L.half_width * 0.9
            lock = np.array([[L.cx + side * L.half_width * 0.98, eye_y - 20], [outer, eye_y + 10],
                             [outer + side * 14, bottom], [inner + side * 20, bottom + 8],
                             [inner + side * 6, L.cy + 60], [L.cx + side * L.half_width * 0.93, eye_y + 30]])
            p.polygon(lock, colour, line, width)
    # strands / shine: photo-like styles get soft streaks, drawn styles a few ink lines
    strand = mix(pal.hair, pal.hair_light, 0.6) if domain in ("photo", "impasto", "anime", "fantasy") \
        else (line or pal.hair_dark)
    sx, sy, rx, ry = _skull(L)
    part = L.cx + identity.hair_part * L.half_width * 0.5
    for k in range(4 if style != "buzz" else 0):
        side = -1 if k % 2 else 1
        start = np.array([part, sy - ry * 0.92])
        end = np.array([L.cx + side * rx * (0.55 + 0.12 * k), eye_y - 40 - 10 * k])
        ctrl = np.array([(start[0] + end[0]) / 2 + side * 25, sy - ry * 0.7])
        w = 5.0 if domain == "anime" else 3.0 if domain != "photo" else 2.2
        p.line(bezier(start, ctrl, end, 10), strand, w)


# ------------------------------------------------------------------------------------------------ head
def draw_body(p: Painter, L: FaceLayout, pal: Palette, domain: str) -> None:
    line, width = _outline(pal, L)
    a = L.half_width
    neck_top = L.cy + 0.45 * L.half_height
    # shoulders: an arc that continues straight down far below the frame (unaligned canvases show more)
    t = np.linspace(math.pi, 2 * math.pi, 33)
    arc = np.stack([L.cx + 290 * np.cos(t), BEYOND_BOTTOM + 10 + 150 * np.sin(t)], axis=1)
    p.polygon(np.vstack([arc, [[L.cx + 290, 1600], [L.cx - 290, 1600]]]), pal.clothes, line, width)
    neck = np.array([[L.cx - 0.42 * a, neck_top], [L.cx + 0.42 * a, neck_top], [L.cx + 0.47 * a, 500],
                     [L.cx, 528], [L.cx - 0.47 * a, 500]])
    p.polygon(neck, mul(pal.skin, 0.86), line, width)


def draw_ears(p: Painter, L: FaceLayout, identity: Identity, pal: Palette) -> None:
    line, width = _outline(pal, L)
    eye_y = float(L.eye_centres[0, 1])
    for side in (-1, 1):
        x = L.cx + side * L.half_width * 0.96
        if L.geometry.pointed_ears:
            ear = np.array([[x, eye_y + 78], [x + side * 26, eye_y + 50], [x + side * 62, eye_y - 52],
                            [x + side * 10, eye_y + 6]])
            p.polygon(ear, pal.skin, line, width or 2.0)
            p.line(np.array([[x + side * 10, eye_y + 50], [x + side * 40, eye_y - 20]]), pal.skin_dark, 4)
        else:
            s = identity.ear_size
            p.ellipse((x + side * 6, eye_y + 42), 17 * s, 32 * s, pal.skin, line, width)
            p.ellipse((x + side * 8, eye_y + 42), 8 * s, 19 * s, pal.skin_dark)


def draw_face(p: Painter, L: FaceLayout, pal: Palette, domain: str) -> None:
    line, width = _outline(pal, L)
    p.polygon(face_outline(L), pal.skin, line, width)
    if domain in ("cartoon", "anime"):      # flat cheek blush
        for side in (-1, 1):
            cx = L.eye_centres[0 if side < 0 else 1, 0] + side * 8
            p.ellipse((cx, float(L.nose_tip[1]) + 6), 26, 12, pal.blush)


# ------------------------------------------------------------------------------------------------ eyes
def _eye_frame(L: FaceLayout, which: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, outward unit vector, downward unit vector) of eye `which` (0 = image-left)."""
    t = L.eye_tilt
    centre = L.eye_centres[which]
    if which == 1:
        return centre, np.array([math.cos(t), -math.sin(t)]), np.array([math.sin(t), math.cos(t)])
    return centre, np.array([-math.cos(t), -math.sin(t)]), np.array([-math.sin(t), math.cos(t)])


def _lid_curves(hw: float, hh: float, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.clip(x / hw, -1, 1)
    base = np.clip(1 - n * n, 0, None)
    upper = -hh * base ** 0.7 * (1 - 0.12 * n)
    lower = hh * 0.78 * base ** 0.9 * (1 + 0.08 * n)
    return upper, lower


def _clip_to_eye(local: np.ndarray, hw: float, hh: float) -> np.ndarray:
    x = np.clip(local[:, 0], -hw, hw)
    upper, lower = _lid_curves(hw, hh, x)
    return np.stack([x, np.clip(local[:, 1], upper, lower)], axis=1)


def draw_eyes(p: Painter, L: FaceLayout, pal: Palette, domain: str) -> None:
    hw, hh, r = L.eye_half_width, L.eye_half_height, L.iris_radius
    line = pal.line or mul(pal.skin, 0.35)
    lid_width = {"photo": 2.6, "impasto": 3.5, "cartoon": L.geometry.outline * 0.8, "anime": 6.5,
                 "fantasy": 4.0, "illustration": 3.0}[domain]
    xs = np.linspace(-hw, hw, 25)
    for which in (0, 1):
        centre, out, down = _eye_frame(L, which)
        to_face = lambda loc: centre + loc[:, :1] * out + loc[:, 1:2] * down  # noqa: E731
        upper, lower = _lid_curves(hw, hh, xs)
        almond = np.vstack([np.stack([xs, upper], 1), np.stack([xs[::-1], lower[::-1]], 1)])
        if domain == "photo":    # crease above the eye
            crease = np.stack([xs * 0.9, upper * 1.0 - hh * 0.55 - 4], 1)
            p.line(to_face(crease), mul(pal.skin, 0.8), 2.0)
        p.polygon(to_face(almond), pal.sclera)
        g = L.gaze_offset
        iris_local = np.array([g @ out, g @ down])
        ry = r * (1.18 if domain == "anime" else 1.0)
        circle = ellipse_points(iris_local, r, ry, 0.0, p.n_for(r))
        p.polygon(to_face(_clip_to_eye(circle, hw, hh)), pal.iris)
        if domain in ("anime", "cartoon", "fantasy"):   # darker upper iris
            top = ellipse_points(iris_local - [0, ry * 0.45], r * 0.95, ry * 0.6, 0.0, p.n_for(r))
            p.polygon(to_face(_clip_to_eye(_clip_circle(top, iris_local, r, ry), hw, hh)), pal.iris_dark)
        pupil = ellipse_points(iris_local, r * 0.5, ry * 0.5, 0.0, p.n_for(r))
        p.polygon(to_face(_clip_to_eye(pupil, hw, hh)), pal.pupil)
        # catch-lights sit up and toward the light, away from the eye centre (which must stay on the pupil)
        hl = iris_local + np.array([-0.4 * r * (1 if which else -1), -0.5 * ry])
        hr = {"anime": 0.22, "cartoon": 0.22, "fantasy": 0.16}.get(domain, 0.14) * r
        p.polygon(to_face(_clip_to_eye(ellipse_points(hl, hr, hr, 0, 16), hw, hh)), (252, 252, 250))
        if domain == "anime":
            small = iris_local + np.array([0.45 * r * (1 if which else -1), 0.55 * ry])
            p.polygon(to_face(_clip_to_eye(ellipse_points(small, 0.1 * r, 0.1 * r, 0, 12), hw, hh)),
                      (255, 255, 255))
        if pal.line is not None and domain in ("cartoon", "illustration"):
            p.polygon(to_face(almond), None, pal.line, lid_width * 0.6)
        # upper lid / lashes: thicker toward the outer corner
        lid = np.stack([xs, upper - lid_width * 0.25], 1)
        widths = lid_width * (0.6 + 0.6 * np.clip((xs / hw + 1) / 2, 0, 1))
        p.polygon(to_face(tapered_stroke(lid, widths)), line)
        if domain in ("anime", "fantasy", "cartoon"):      # lash flick at the outer corner
            flick = np.array([[hw * 0.85, upper[-3] - 2], [hw * 1.25, -hh * 0.55 - 6], [hw * 1.0, -2]])
            p.polygon(to_face(flick), line)
        if domain in ("photo", "impasto"):
            p.line(to_face(np.stack([xs[3:-2], lower[3:-2] + 1.2], 1)), mul(pal.skin, 0.82), 1.6)


def _clip_circle(points: np.ndarray, centre: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Pull points that lie outside the iris ellipse onto it (keeps shading inside the iris)."""
    d = (points - centre) / np.array([rx, ry])
    n = np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1.0)
    return centre + d / n * np.array([rx, ry])


def draw_brows(p: Painter, L: FaceLayout, identity: Identity, pal: Palette, domain: str) -> None:
    hw = identity.eye_half_width
    thickness = identity.brow_thickness * (0.55 if domain == "anime" else 1.0)
    raise_by = identity.brow_raise + (12 if domain == "anime" else 0) + L.eye_half_height * 0.3
    colour = pal.line if domain == "illustration" else pal.brow
    for which in (0, 1):
        centre = L.eye_centres[which]
        side = 1 if which else -1
        inner = centre + [-side * hw * 0.85, -raise_by + 4]
        peak = centre + [side * hw * 0.25, -raise_by - 5 - 9 * identity.brow_arch]
        outer = centre + [side * hw * 1.25, -raise_by + 4 + 5 * identity.brow_arch]
        pts = bezier(inner, 2 * peak - (inner + outer) / 2, outer, 12)
        widths = thickness * np.linspace(1.0, 0.45, 12)
        p.polygon(tapered_stroke(pts, widths), colour)


# ------------------------------------------------------------------------------------------- nose, mouth
def draw_nose(p: Painter, L: FaceLayout, pal: Palette, domain: str, light_side: float) -> None:
    tip, nw = L.nose_tip, L.nose_half_width
    ink = pal.line or pal.skin_dark
    if domain == "anime":
        p.polygon(np.array([tip + [-1, -10], tip + [3.5, 1], tip + [-3.5, 2]]), mul(pal.skin, 0.5))
        return
    shadow_side = -light_side
    if domain in ("photo", "impasto", "fantasy"):
        bridge = bezier(L.eye_centres.mean(0) + [shadow_side * 16, 18], tip + [shadow_side * 15, -40],
                        tip + [shadow_side * nw * 0.55, -8], 10)
        p.line(bridge, mul(pal.skin, 0.86), 5.0)
        p.ellipse(tip + [0, -3], nw * 0.42, nw * 0.34, mix(pal.skin, (255, 245, 235), 0.22))
    if domain == "cartoon":
        p.ellipse(tip + [0, -6], nw * 0.62, nw * 0.52, pal.skin, pal.line, L.geometry.outline * 0.7)
    if domain in ("illustration",):
        p.line(bezier(tip + [shadow_side * 8, -60], tip + [shadow_side * 14, -20], tip + [shadow_side * 4, 0], 8),
               ink, 2.6)
    for side in (-1, 1):
        nostril = tip + [side * nw * 0.52, 5]
        p.ellipse(nostril, nw * 0.24, nw * 0.13, mul(pal.skin, 0.4) if domain != "illustration" else ink,
                  angle=side * 0.35)
        if domain in ("photo", "impasto", "fantasy", "illustration"):
            wing = bezier(tip + [side * nw * 0.75, -8], tip + [side * nw * 1.05, 2], tip + [side * nw * 0.6, 8], 8)
            p.line(wing, mul(pal.skin, 0.72) if domain != "illustration" else ink, 2.0)


def draw_mouth(p: Painter, L: FaceLayout, pal: Palette, domain: str, smile: float) -> None:
    left, right = L.mouth_corners
    cx = (left[0] + right[0]) / 2
    mid = np.array([cx, left[1] + L.mouth_centre_drop])
    ctrl = 2 * mid - (left + right) / 2
    seam = bezier(left, ctrl, right, 16)
    full = L.lip_fullness * L.geometry.mouth
    hw = (right[0] - left[0]) / 2
    seam_mid = seam[8]
    if domain == "anime":
        opening = bezier(left + [4, 0], ctrl + [0, 10 + 12 * smile], right - [4, 0], 12)
        p.polygon(np.vstack([seam, opening[::-1]]), (150, 60, 70))
        p.line(seam, pal.line or pal.lip_dark, 3.0)
    else:
        top = np.array([left, [cx - 0.45 * hw, seam_mid[1] - 10 * full - 2], [cx, seam_mid[1] - 7 * full],
                        [cx + 0.45 * hw, seam_mid[1] - 10 * full - 2], right])
        bottom = bezier(left, ctrl + [0, 28 * full + 6 * smile], right, 16)
        line, width = _outline(pal, L)
        p.polygon(np.vstack([top, bottom[::-1]]), pal.lip, line, width * 0.6)
        p.polygon(np.vstack([top, seam[::-1]]), mul(pal.lip, 0.82))
        if smile > 0.55:   # open smile: dark mouth with a row of teeth under the upper lip
            open_by = (smile - 0.55) * 30 * full
            lower_edge = bezier(left, ctrl + [0, open_by * 2], right, 16)
            p.polygon(np.vstack([seam, lower_edge[::-1]]), (70, 24, 30))
            teeth = bezier(left + [6, 1], ctrl + [0, open_by * 0.9], right - [6, -1], 16)
            p.polygon(np.vstack([seam[1:-1], teeth[::-1][1:-1]]), (242, 238, 228))
        p.line(seam, pal.lip_dark if domain != "illustration" else pal.line, 2.6)
    for corner in (left, right):      # the corners themselves: small dark dimples (landmark targets)
        p.ellipse(corner, 3.6, 3.6, pal.lip_dark if pal.line is None else pal.line)


# ------------------------------------------------------------------------------------------- accessories
def draw_glasses(p: Painter, L: FaceLayout, identity: Identity, pal: Palette) -> None:
    colour = pal.glasses
    # 9 units is 1.1 px at 64 px: the rims must survive the working resolution to be ground truth one can see
    width = 9.0 if pal.line is None else max(9.0, L.geometry.outline * 0.8)
    hw = identity.eye_half_width * 1.1 * max(1.0, L.geometry.eye_width * 0.95)
    inner = []
    for which in (0, 1):
        c = L.eye_centres[which] + [0, 3]
        if identity.glasses_round:
            shape = ellipse_points(c, hw * 1.3, hw * 1.15, 0, 40)
        else:
            t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
            sq = np.stack([np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.4,
                           np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.4], 1)
            shape = c + sq * [hw * 1.4, hw * 0.95]
        p.line(shape, colour, width, closed=True)
        side = 1 if which else -1
        inner.append(c + [-side * hw * 1.3, -4])
        temple_from = c + [side * hw * 1.35, -6]
        p.line(np.array([temple_from, [L.cx + side * L.half_width * 0.99, temple_from[1] - 4]]), colour, width)
    bridge = bezier(inner[0], (inner[0] + inner[1]) / 2 + [0, -10], inner[1], 8)
    p.line(bridge, colour, width)


def draw_fantasy_ornaments(p: Painter, L: FaceLayout, pal: Palette, rng: np.random.Generator) -> None:
    eye_y = float(L.eye_centres[0, 1])
    gold, gem = pal.accent, pal.iris
    # circlet across the forehead with a gem in the middle
    band = bezier([L.cx - L.half_width * 1.02, eye_y - 44], [L.cx, eye_y - 112], [L.cx + L.half_width * 1.02,
                                                                                    eye_y - 44], 20)
    p.line(band, gold, 7.0)
    c = np.array([L.cx, eye_y - 80])
    p.polygon(np.array([c + [0, -20], c + [13, 0], c + [0, 20], c + [-13, 0]]), gem, mul(gold, 0.7), 3.0)
    # cheek markings: three dots and a curl under each eye
    for which, side in ((0, -1), (1, 1)):
        e = L.eye_centres[which]
        curl = bezier(e + [side * 6, 30], e + [side * 40, 42], e + [side * 34, 70], 10)
        p.line(curl, gold, 3.2)
        for k in range(3):
            p.ellipse(e + [side * (14 + 11 * k), 52 + 6 * k], 3.2, 3.2, gem)


def draw_stars(p: Painter, pal: Palette, rng: np.random.Generator, count: int = 40) -> None:
    """Sparkles over the backdrop (face frame, so they follow the face through alignment)."""
    for _ in range(count):
        x, y = rng.uniform(-300, 812), rng.uniform(-300, 812)
        if abs(x - 256) < 170 and 40 < y < 520:
            continue                      # keep them off the head
        r = rng.uniform(3, 9)
        star = np.array([[x, y - r * 2], [x + r * 0.4, y - r * 0.4], [x + r * 2, y], [x + r * 0.4, y + r * 0.4],
                         [x, y + r * 2], [x - r * 0.4, y + r * 0.4], [x - r * 2, y], [x - r * 0.4, y - r * 0.4]])
        p.polygon(star, mix(pal.accent, (255, 255, 255), rng.uniform(0.2, 0.8)))


def draw_portrait(p: Painter, L: FaceLayout, identity: Identity, view: View, pal: Palette, domain: str) -> None:
    """All of one face, back to front."""
    rng = np.random.default_rng([view.texture_seed, 3])
    light_side = math.copysign(1.0, math.cos(view.light_angle))   # +1: light comes from image-right
    if domain == "fantasy":
        draw_stars(p, pal, rng)
    draw_back_hair(p, L, identity, pal)
    draw_body(p, L, pal, domain)
    draw_ears(p, L, identity, pal)
    draw_face(p, L, pal, domain)
    draw_eyes(p, L, pal, domain)
    draw_brows(p, L, identity, pal, domain)
    draw_nose(p, L, pal, domain, light_side)
    draw_mouth(p, L, pal, domain, view.smile)
    draw_front_hair(p, L, identity, pal, domain, rng)
    if identity.glasses:
        draw_glasses(p, L, identity, pal)
    if domain == "fantasy":
        draw_fantasy_ornaments(p, L, pal, rng)
