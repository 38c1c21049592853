"""Render portraits: one face (aligned or not), several faces on a canvas, datasets and a contact sheet."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

from . import effects
from .geometry import LANDMARK_NAMES, FaceLayout, apply, face_layout, face_to_pixels, scale_of, similarity
from .painter import Painter
from .palette import Palette, domain_palette
from .params import DOMAINS, Identity, View, identity_rng, sample_identity, sample_view, view_rng
from .portrait import draw_portrait, face_outline

COORDINATES = "continuous pixels: pixel (i, j) covers [i, i+1) x [j, j+1); its centre is (i + 0.5, j + 0.5)"


@dataclass
class PlacedFace:
    identity: Identity
    view: View
    layout: FaceLayout
    palette: Palette
    face_to_pixels: np.ndarray    # 3x3

    def meta(self) -> dict[str, Any]:
        m = self.face_to_pixels
        outline = apply(m, face_outline(self.layout, 36, grow=40.0))
        return {
            "identity_id": self.identity.identity_id,
            "identity": self.identity.to_dict(),
            "view": self.view.to_dict(),
            "landmarks": np.round(apply(m, self.layout.landmarks), 4).tolist(),
            "landmark_names": list(LANDMARK_NAMES),
            "face_transform": np.round(m[:2], 8).tolist(),
            "bbox": np.round(np.concatenate([outline.min(0), outline.max(0)]), 2).tolist(),
            "palette": self.palette.to_dict(),
        }


def supersampling(width: int, height: int) -> int:
    """4x anti-aliasing for small images, 2x for large ones (cost grows with the square)."""
    side = max(width, height)
    return 4 if side <= 400 else 2 if side <= 1600 else 1


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {', '.join(DOMAINS)}")


def _render_faces(faces: list[PlacedFace], width: int, height: int, domain: str,
                  backdrop_to_pixels: np.ndarray, backdrop_view: View) -> Image.Image:
    ss = supersampling(width, height)
    bu, bv = effects.frame_coords(backdrop_to_pixels, width, height)
    out = effects.background(domain, backdrop_view.background_kind, faces[0].palette, bu, bv,
                             scale_of(backdrop_to_pixels), backdrop_view.texture_seed)
    for face in faces:        # each face is its own premultiplied layer, composited back to front
        painter = Painter(width, height, ss)
        painter.set_transform(face.face_to_pixels)
        draw_portrait(painter, face.layout, face.identity, face.view, face.palette, domain)
        rgb, alpha = painter.downsampled()
        u, v = effects.frame_coords(face.face_to_pixels, width, height)
        rgb = effects.shade_face_layer(domain, rgb, alpha, u, v, face.layout, face.palette,
                                       face.view.light_angle, scale_of(face.face_to_pixels))
        out = rgb + out * (1.0 - alpha[..., None])
    return effects.finish(domain, out, backdrop_view.texture_seed)


def render(identity: Identity, view: View, domain: str = "photo", size: int = 256) -> tuple[Image.Image, dict]:
    """One portrait. Aligned views give `size`x`size` FFHQ-aligned images; unaligned ones a larger canvas with
    the face rotated/scaled/moved (`view.canvas`, `view.rotation_deg`, `view.scale`, `view.offset`)."""
    _check_domain(domain)
    layout = face_layout(identity, view, domain)
    m, canvas = face_to_pixels(layout, view, size)
    face = PlacedFace(identity, view, layout, domain_palette(identity, view, domain), m)
    image = _render_faces([face], canvas, canvas, domain, m, view)
    face_meta = face.meta()
    meta = {"domain": domain, "size": [canvas, canvas], "aligned_size": size, "aligned": view.aligned,
            "coordinates": COORDINATES, **face_meta, "faces": [face_meta]}
    return image, meta


def render_from_meta(meta: dict) -> Image.Image:
    """Re-render an image from its metadata (single-face images)."""
    image, _ = render(Identity.from_dict(meta["identity"]), View.from_dict(meta["view"]), meta["domain"],
                      int(meta["aligned_size"]))
    return image


def with_pose(view: View, rotation_deg: float, scale: float, offset: tuple[float, float],
              canvas: float = 1.5) -> View:
    """The same view (expression, light, background) with the face moved on a larger canvas."""
    return dataclasses.replace(view, aligned=False, rotation_deg=rotation_deg, scale=scale,
                               offset=tuple(offset), canvas=canvas)


def render_photo_scene(identities: list[Identity], size: int, canvas: tuple[int, int] | None = None,
                       seed: int = 0, domain: str = "photo") -> tuple[Image.Image, dict]:
    """Several faces on one canvas (for detection tests). `size` is each face's aligned size before its
    random 0.5-0.8x scale; faces sit in a row of cells, each rotated by up to ±25 degrees."""
    _check_domain(domain)
    rng = np.random.default_rng([seed, 21])
    n = len(identities)
    if n == 0:
        raise ValueError("render_photo_scene needs at least one identity")
    width, height = canvas or (int(size * 0.8 * n + size * 0.3), int(size * 1.1))
    faces = []
    for k, identity in enumerate(identities):
        view = sample_view(np.random.default_rng([seed, 22, k]), aligned=True)
        layout = face_layout(identity, view, domain)
        aligned, _ = face_to_pixels(layout, view, size)
        cell = width / n
        centre = np.array([cell * (k + 0.5) + rng.uniform(-0.08, 0.08) * cell,
                           height / 2 + rng.uniform(-0.08, 0.08) * height])
        scale = min(rng.uniform(0.5, 0.8), 0.95 * cell / size)
        place = similarity(float(rng.uniform(-25, 25)), scale, np.array([size / 2, size / 2]), centre)
        view = dataclasses.replace(view, aligned=False, rotation_deg=0.0, scale=scale, canvas=0.0)
        faces.append(PlacedFace(identity, view, layout, domain_palette(identity, view, domain), place @ aligned))
    backdrop = np.diag([width / 512.0, height / 512.0, 1.0])
    image = _render_faces(faces, width, height, domain, backdrop, faces[0].view)
    meta = {"domain": domain, "size": [width, height], "aligned": False, "coordinates": COORDINATES,
            "faces": [f.meta() for f in faces]}
    return image, meta


def generate(domain: str, count: int, size: int, seed: int, aligned: bool = True,
             start: int = 0) -> Iterator[tuple[str, Image.Image, dict]]:
    """Yield (key, image, meta) for identities start..start+count-1 of dataset `seed`.

    Identity k of a seed is the same person in every domain (ground truth for fidelity); use different seeds
    for unpaired photo and style sets."""
    _check_domain(domain)
    for index in range(start, start + count):
        identity_id = f"s{seed}-{index:06d}"
        identity = sample_identity(identity_rng(seed, index), identity_id)
        view = sample_view(view_rng(seed, index, True), aligned=True)
        if not aligned:
            r = view_rng(seed, index, False)
            view = with_pose(view, float(r.uniform(-30, 30)), float(r.uniform(0.55, 0.85)),
                             (float(r.uniform(-0.15, 0.15)), float(r.uniform(-0.15, 0.15))))
        image, meta = render(identity, view, domain, size)
        key = identity_id if aligned else f"{identity_id}-unaligned"
        meta["key"] = key
        yield key, image, meta


def contact_sheet(n_identities: int, size: int, seed: int) -> Image.Image:
    """Rows = identities, columns = photo followed by the five styles, with a header naming each column."""
    header = 18
    sheet = Image.new("RGB", (size * len(DOMAINS), size * n_identities + header), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, domain in enumerate(DOMAINS):
        draw.text((col * size + 4, 3), domain, fill=(0, 0, 0))
        for row, (_, image, _) in enumerate(generate(domain, n_identities, size, seed)):
            sheet.paste(image, (col * size, header + row * size))
    return sheet
