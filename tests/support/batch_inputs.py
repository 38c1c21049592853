"""A folder of test photos for batch stylization: mostly good portraits, ~10% bad inputs of every kind.

Faces are bright ovals with dark eyes, brows and mouth on a darker, textured background (what the tiny SCRFD-format
detector in `tiny_detector.py` measures). Every file comes with what the pipeline must do with it, so tests can
check that outputs + error lines account for every input and that each error names its input and reason.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from fstrain.data import storage

SKIN = ((236, 208, 186), (244, 222, 200), (228, 200, 176), (250, 230, 214))


@dataclass
class Expectation:
    status: str                       # "ok" | "error"
    stage: str = ""                   # error stage
    reason: str = ""                  # substring of the error message
    face_box: tuple | None = None     # (x1, y1, x2, y2) of the face that must be chosen
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


def draw_face(draw: ImageDraw.ImageDraw, cx: float, cy: float, half_w: float, half_h: float,
              skin: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """A frontal face oval with eyes, brows, nose and mouth; returns its box."""
    draw.ellipse((cx - half_w, cy - half_h, cx + half_w, cy + half_h), fill=skin)
    eye_dx, eye_y, eye_r = 0.36 * half_w, cy - 0.14 * half_h, max(1.5, 0.1 * half_w)
    for sign in (-1, 1):
        ex = cx + sign * eye_dx
        draw.ellipse((ex - eye_r * 1.4, eye_y - eye_r, ex + eye_r * 1.4, eye_y + eye_r), fill=(40, 30, 30))
        draw.line((ex - eye_r * 1.6, eye_y - 2.2 * eye_r, ex + eye_r * 1.6, eye_y - 2.4 * eye_r), fill=(70, 50, 40),
                  width=max(1, int(eye_r * 0.6)))
    draw.line((cx, cy - 0.02 * half_h, cx - 0.06 * half_w, cy + 0.18 * half_h), fill=(190, 150, 130), width=1)
    mouth_y = cy + 0.45 * half_h
    draw.arc((cx - 0.27 * half_w, mouth_y - 0.08 * half_h, cx + 0.27 * half_w, mouth_y + 0.08 * half_h), 0, 180,
             fill=(150, 60, 60), width=max(1, int(0.05 * half_w)))
    return (cx - half_w, cy - half_h, cx + half_w, cy + half_h)


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    base = rng.integers(20, 90, size=3)
    noise = rng.normal(0, 10, size=(height, width, 1))
    gradient = np.linspace(0, 30, width)[None, :, None]
    pixels = np.clip(base[None, None, :] + noise + gradient, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def portrait(rng: np.random.Generator, width: int = 160, height: int = 160) -> tuple[Image.Image, tuple]:
    image = background(rng, width, height)
    draw = ImageDraw.Draw(image)
    half_w = rng.uniform(0.16, 0.24) * width
    half_h = half_w * rng.uniform(1.2, 1.35)
    cx = rng.uniform(half_w + 12, width - half_w - 12)
    cy = rng.uniform(half_h + 12, height - half_h - 12)
    draw.ellipse((cx - half_w * 1.05, cy - half_h * 1.12, cx + half_w * 1.05, cy - half_h * 0.2), fill=(35, 25, 20))
    box = draw_face(draw, cx, cy, half_w, half_h, SKIN[int(rng.integers(len(SKIN)))])
    return image, box


def _png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **kwargs)
    return buffer.getvalue()


def write_batch_inputs(prefix: str, n_plain: int = 44, seed: int = 0) -> BatchInputs:
    """Write the set under `prefix` (local dir or s3:// prefix): n_plain + 8 handled cases + 8 bad inputs."""
    rng = np.random.default_rng(seed)
    out = BatchInputs(prefix)

    def put(name: str, data: bytes, expectation: Expectation) -> None:
        storage.write_bytes(storage.join(prefix, name), data)
        out.expected[name.rsplit(".", 1)[0]] = expectation

    for i in range(n_plain):
        image, box = portrait(rng)
        sub = "people/" if i % 3 == 0 else ""
        data = _jpeg(image) if i % 2 else _png(image)
        put(f"{sub}photo-{i:03d}.{'jpg' if i % 2 else 'png'}", data, Expectation("ok", face_box=box))

    # Handled cases: unusual encodings that must decode to a usable RGB photo.
    image, box = portrait(rng)
    put("modes/gray.png", _png(image.convert("L")), Expectation("ok", face_box=box, note="L"))
    image, box = portrait(rng)
    put("modes/gray-alpha.png", _png(image.convert("LA")), Expectation("ok", face_box=box, note="LA"))
    image, box = portrait(rng)
    put("modes/palette.png", _png(image.convert("P", palette=Image.ADAPTIVE)), Expectation("ok", face_box=box))
    image, box = portrait(rng)
    rgba = image.convert("RGBA")
    rgba.putalpha(255)
    put("modes/rgba.png", _png(rgba), Expectation("ok", face_box=box))
    image, box = portrait(rng)
    put("modes/cmyk.jpg", _jpeg(image.convert("CMYK")), Expectation("ok", face_box=box))
    image, box = portrait(rng)
    wide = (np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    put("modes/gray16.png", _png(Image.fromarray(wide)), Expectation("ok", face_box=box, note="16-bit"))
    # EXIF orientation 6 (rotate 90 CW to display): store the pixels rotated the other way.
    image, box = portrait(rng, 160, 200)
    stored = image.transpose(Image.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("modes/exif-rotated.jpg", _jpeg(stored, exif=exif.tobytes()), Expectation("ok", face_box=box))
    # Several faces: the largest one must be chosen.
    image = background(rng, 320, 200)
    draw = ImageDraw.Draw(image)
    draw_face(draw, 60, 70, 22, 28, SKIN[0])
    big = draw_face(draw, 220, 105, 40, 52, SKIN[1])
    put("group/two-faces.jpg", _jpeg(image), Expectation("ok", face_box=big, note="largest"))

    # Bad inputs: each must become an error line naming the input and the reason.
    image, _ = portrait(rng)
    whole = _jpeg(image)
    put("bad/truncated.jpg", whole[: len(whole) // 3], Expectation("error", "decode", "truncated"))
    put("bad/empty.png", b"", Expectation("error", "decode", "empty"))
    put("bad/notes.jpg", b"these are my holiday notes, not a photo\n" * 20, Expectation("error", "decode", "not an image"))
    put("bad/garbage.webp", bytes(rng.integers(0, 256, 4096, dtype=np.uint8)), Expectation("error", "decode", "image"))
    put("bad/landscape.png", _png(background(rng, 200, 150)), Expectation("error", "detect", "no face"))
    put("bad/tiny.png", _png(portrait(rng)[0].resize((24, 24))), Expectation("error", "decode", "too small"))
    bomb = Image.new("1", (9000, 8000))   # 72 Mpx, a few KB as PNG
    put("bad/bomb.png", _png(bomb, optimize=True), Expectation("error", "decode", "decompression bomb"))
    image = background(rng, 160, 160)   # detected, but under the test's --min-face-side of 30 px
    draw_face(ImageDraw.Draw(image), 80, 80, 11, 14, SKIN[0])
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
    accepts, plus bad files made from them. Returns key -> EncodedCase (keys are the file stems)."""
    from fstrain.data.synthetic import generate

    photos = [image for _, image, _ in generate("photo", 8, size, seed, aligned=True)]
    cases: dict[str, EncodedCase] = {}

    def put(name: str, data: bytes, case: EncodedCase) -> None:
        storage.write_bytes(storage.join(prefix, name), data)
        cases[name.rsplit(".", 1)[0]] = case

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
