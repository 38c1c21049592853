"""A folder of test photos for batch stylization: synthetic portraits, ~18% bad inputs of every kind.

Good photos are unaligned `photo` renders of the synthetic portrait world (`fstrain.data.synthetic`: rotated,
off-centre faces on a 1.5x canvas) and two-face scenes; each comes with the renderer's ground-truth face box (the
face outline grown by 40 template units, `meta["bbox"]`) of the face the pipeline must choose. Every file comes with
what the pipeline must do with it, so tests can check that outputs + error lines account for every input and that
each error names its input and reason. The test detector (`tiny_detector.py`) finds faces by skin colour, so gray
photos are expected to fail detection ("no face found") after decoding fine.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from fstrain.data import storage

PHOTO_SIZE = 128         # aligned size of the renders; unaligned canvases are 1.5x (192 px)


@dataclass
class Expectation:
    status: str                       # "ok" | "error"
    stage: str = ""                   # error stage
    reason: str = ""                  # substring of the error message
    face_box: tuple | None = None     # (x1, y1, x2, y2) ground truth of the face that must be chosen
    note: str = ""


@dataclass
class BatchInputs:
    prefix: str
    expected: dict[str, Expectation] = field(default_factory=dict)   # key -> expectation

    @property
    def keys(self) -> list[str]:
        return sorted(self.expected)

    def keys_with(self, status: str) -> list[str]:
        return sorted(k for k, e in self.expected.items() if e.status == status)


def box_iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (box_area(a) + box_area(b) - inter)


def box_area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def true_boxes_largest_first(meta: dict) -> list[tuple]:
    """The ground-truth face boxes of a rendered scene, largest first (the face the pipeline must choose)."""
    return sorted((tuple(face["bbox"]) for face in meta["faces"]), key=box_area, reverse=True)


def synthetic_photo(index: int, size: int = PHOTO_SIZE, seed: int = 0) -> tuple[Image.Image, dict]:
    """Unaligned synthetic photo `index` of dataset `seed` and its metadata (bbox, landmarks, face_transform...)."""
    from fstrain.data.synthetic import generate

    _, image, meta = next(generate("photo", 1, size, seed, aligned=False, start=index))
    return image, meta


def two_face_scene(seed: int, size: int = PHOTO_SIZE, min_area_ratio: float = 1.8) -> tuple[Image.Image, list]:
    """The first two-person scene from `seed` on whose faces' true boxes differ in area by `min_area_ratio` or more
    (chosen by ground truth only). Returns (image, true boxes largest first)."""
    from fstrain.data.synthetic import identity_rng, render_photo_scene, sample_identity

    for k in range(1000):
        people = [sample_identity(identity_rng(seed, 2 * k + j), f"scene{seed}-{k}-{j}") for j in range(2)]
        image, meta = render_photo_scene(people, size, seed=seed * 1000 + k)
        boxes = true_boxes_largest_first(meta)
        if box_area(boxes[0]) >= min_area_ratio * box_area(boxes[1]):
            return image, boxes
    raise ValueError(f"no scene with face areas {min_area_ratio}x apart in seed {seed}")


def backdrop(seed: int, width: int = 144, height: int = 144) -> Image.Image:
    """A synthetic photo with no face: the renderer's backdrop (gradient, bokeh or window light) and photo finish."""
    from fstrain.data.synthetic import effects, identity_rng, sample_identity, sample_view
    from fstrain.data.synthetic.palette import domain_palette

    rng = np.random.default_rng([seed, 99])
    view = sample_view(rng, aligned=False)
    palette = domain_palette(sample_identity(identity_rng(seed, 0), "backdrop"), view, "photo")
    frame_to_pixels = np.diag([width / 512.0 * rng.uniform(0.8, 1.5), height / 512.0 * rng.uniform(0.8, 1.5), 1.0])
    u, v = effects.frame_coords(frame_to_pixels, width, height)
    scale = float(np.sqrt(abs(np.linalg.det(frame_to_pixels[:2, :2]))))
    rgb = effects.background("photo", view.background_kind, palette, u, v, scale, view.texture_seed)
    return effects.finish("photo", rgb, view.texture_seed)


def small_face_photo(seed: int, side: int = 160, face_size: int = 56) -> tuple[Image.Image, tuple]:
    """One synthetic face rendered at `face_size` (its box ~20-30 px) on a `side` px canvas. Returns (image, box)."""
    from fstrain.data.synthetic import identity_rng, render_photo_scene, sample_identity

    image, meta = render_photo_scene([sample_identity(identity_rng(seed, 0), f"small{seed}")], face_size,
                                     canvas=(side, side), seed=seed)
    return image, tuple(meta["faces"][0]["bbox"])


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def write_batch_inputs(prefix: str, n_plain: int = 43, seed: int = 0) -> BatchInputs:
    """Write the set under `prefix` (local dir or s3:// prefix): n_plain photos + 9 handled cases + 8 bad inputs."""
    rng = np.random.default_rng(seed)
    out = BatchInputs(prefix)
    index = iter(range(10_000))

    def put(name: str, data: bytes, expectation: Expectation) -> None:
        storage.write_bytes(storage.join(prefix, name), data)
        out.expected[name] = expectation          # keys are relative paths, extension kept

    def photo() -> tuple[Image.Image, tuple]:
        image, meta = synthetic_photo(next(index), seed=seed)
        return image, tuple(meta["bbox"])

    for i in range(n_plain):
        image, box = photo()
        sub = "people/" if i % 3 == 0 else ""
        data = _jpeg(image) if i % 2 else _png(image)
        put(f"{sub}photo-{i:03d}.{'jpg' if i % 2 else 'png'}", data, Expectation("ok", face_box=box))

    # Handled cases: unusual encodings that must decode to a usable RGB photo. Gray ones decode fine but carry no
    # skin colour for the test detector: they must end as "no face found" at the detect stage, not at decode.
    no_colour = dict(stage="detect", reason="no face found")
    image, _ = photo()
    put("modes/gray.png", _png(image.convert("L")), Expectation("error", note="L", **no_colour))
    image, _ = photo()
    put("modes/gray-alpha.png", _png(image.convert("LA")), Expectation("error", note="LA", **no_colour))
    image, _ = photo()
    wide = (np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    put("modes/gray16.png", _png(Image.fromarray(wide)), Expectation("error", note="16-bit", **no_colour))
    image, box = photo()
    put("modes/palette.png", _png(image.convert("P", palette=Image.ADAPTIVE)), Expectation("ok", face_box=box))
    image, box = photo()
    rgba = image.convert("RGBA")
    rgba.putalpha(255)
    put("modes/rgba.png", _png(rgba), Expectation("ok", face_box=box))
    image, box = photo()
    put("modes/cmyk.jpg", _jpeg(image.convert("CMYK")), Expectation("ok", face_box=box))
    # EXIF orientation 6 (rotate 90 CW to display): store the pixels rotated the other way.
    image, box = photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    put("modes/exif-rotated.jpg", _jpeg(image.transpose(Image.ROTATE_90), exif=exif.tobytes()),
        Expectation("ok", face_box=box))
    # Two faces of clearly different sizes: the largest one must be chosen.
    for name, scene_seed in (("group/two-faces.jpg", seed + 1), ("group/two-faces-b.png", seed + 2)):
        image, boxes = two_face_scene(scene_seed)
        put(name, _jpeg(image) if name.endswith(".jpg") else _png(image),
            Expectation("ok", face_box=boxes[0], note="largest"))

    # Bad inputs: each must become an error line naming the input and the reason.
    image, _ = photo()
    whole = _jpeg(image)
    put("bad/truncated.jpg", whole[: len(whole) // 3], Expectation("error", "decode", "truncated"))
    put("bad/empty.png", b"", Expectation("error", "decode", "empty"))
    put("bad/notes.jpg", b"these are my holiday notes, not a photo\n" * 20, Expectation("error", "decode", "not an image"))
    put("bad/garbage.webp", bytes(rng.integers(0, 256, 4096, dtype=np.uint8)), Expectation("error", "decode", "image"))
    put("bad/landscape.png", _png(backdrop(seed, 200, 150)), Expectation("error", "detect", "no face"))
    put("bad/tiny.png", _png(photo()[0].resize((24, 24))), Expectation("error", "decode", "too small"))
    bomb = Image.new("1", (9000, 8000))   # 72 Mpx, a few KB as PNG
    put("bad/bomb.png", _png(bomb, optimize=True), Expectation("error", "decode", "decompression bomb"))
    image, _ = small_face_photo(seed)   # detected, but under the test's --min-face-side of 30 px
    put("bad/face-too-small.png", _png(image), Expectation("error", "detect", "face too small"))
    return out


# ------------------------------------------------------------------------------ synthetic portraits (ground truth)
@dataclass
class EncodedCase:
    """One input file made from a synthetic aligned photo: what the decoded face must look like, or why it fails."""
    truth: Image.Image | None     # the aligned render as the pipeline should see it (RGB; gray for gray files)
    tolerance: float = 0.0        # allowed mean |pixel difference| after resizing (0: bit-exact, lossless files)
    error: str = ""               # for bad inputs: a substring of the decode error


def synthetic_encodings(prefix: str, size: int = 64, seed: int = 7) -> dict[str, EncodedCase]:
    """Synthetic aligned photos (one identity each) written under `prefix` in every odd encoding the batch job
    accepts, plus bad files made from them. Returns key -> EncodedCase (keys are the file names)."""
    from fstrain.data.synthetic import generate

    photos = [image for _, image, _ in generate("photo", 8, size, seed, aligned=True)]
    cases: dict[str, EncodedCase] = {}

    def put(name: str, data: bytes, case: EncodedCase) -> None:
        storage.write_bytes(storage.join(prefix, name), data)
        cases[name] = case

    put("photo-png.png", _png(photos[0]), EncodedCase(photos[0]))
    put("photo-jpg.jpg", _jpeg(photos[1]), EncodedCase(photos[1], 3.0))
    put("palette.png", _png(photos[2].convert("P", palette=Image.ADAPTIVE)), EncodedCase(photos[2], 4.0))
    rgba = photos[3].convert("RGBA")
    rgba.putalpha(255)
    put("rgba.png", _png(rgba), EncodedCase(photos[3]))
    put("cmyk.jpg", _jpeg(photos[4].convert("CMYK")), EncodedCase(photos[4], 4.0))
    gray = photos[5].convert("L")
    put("gray16.png", _png(Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)),
        EncodedCase(gray.convert("RGB"), 0.5))
    exif = Image.Exif()
    exif[0x0112] = 6                       # "rotate 90 CW to display": store the pixels turned the other way
    put("exif-rotated.jpg", _jpeg(photos[6].transpose(Image.ROTATE_90), exif=exif.tobytes()),
        EncodedCase(photos[6], 3.0))
    whole = _jpeg(photos[7])
    put("bad-truncated.jpg", whole[: len(whole) // 3], EncodedCase(None, error="truncated"))
    put("bad-empty.png", b"", EncodedCase(None, error="empty"))
    put("bad-notes.jpg", b"not a photo, just notes\n" * 20, EncodedCase(None, error="not an image"))
    put("bad-tiny.png", _png(photos[7].resize((24, 24))), EncodedCase(None, error="too small"))
    put("bad-bomb.png", _png(Image.new("1", (9000, 8000)), optimize=True),
        EncodedCase(None, error="decompression bomb"))
    return cases
