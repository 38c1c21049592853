"""Robust image decoding for user-supplied files: anything PIL can read becomes an upright 8-bit RGB image.

Odd inputs are converted and the conversion is recorded (EXIF rotation, grayscale, palette, alpha composited on
white, CMYK, 16-bit/32-bit/float, ICC profile to sRGB, first frame of an animation). Inputs that cannot be used
(zero bytes, truncated, not an image, decompression bombs) raise `ImageDecodeError` naming the file and the reason.
The one image decoder: ingest, `fstrain.stylize`, batch stylization, evaluation and pretraining photos come through
`decode_image` / `decode_image_info`, and dataset shards, pseudo-pairs and the training stream through
`decode_pixels`, so EXIF orientation and every odd mode are handled the same way everywhere.
"""
from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

# Far above any portrait we train on (8192 x 8192), far below what exhausts memory on a worker.
DEFAULT_MAX_PIXELS = 8192 * 8192
# File suffixes listed as images in a folder or prefix of user photos (every entry point lists with this).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageDecodeError(ValueError):
    """An input that cannot be turned into an image; the message starts with its name."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclasses.dataclass
class DecodedImage:
    image: Image.Image              # mode "RGB", EXIF orientation applied
    format: str | None              # "PNG", "JPEG", ...
    original_mode: str
    original_size: tuple[int, int]  # (width, height) as stored, before EXIF rotation
    conversions: list[str]          # what was done to get here, in order; [] for a plain RGB file


def decode_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes of an image file -> upright RGB PIL image; raises ImageDecodeError(name, reason)."""
    return decode_image_info(data, name, max_pixels).image


def decode_image_info(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Like decode_image, also reporting the original mode/size and the conversions applied."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns above its own global limit; we enforce `max_pixels` ourselves with a clearer message.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageDecodeError(name, f"not an image (unrecognised format, {len(data)} bytes)") from None
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(name, f"refused as a decompression bomb: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken headers
            raise ImageDecodeError(name, f"unreadable image header: {exc}") from None
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                name, f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                      "(possible decompression bomb); downscale it first or raise max_pixels")
        if width < 1 or height < 1:
            raise ImageDecodeError(name, f"image has no pixels ({width}x{height})")
        fmt, original_mode = img.format, img.mode
        conversions: list[str] = []
        frames = getattr(img, "n_frames", 1)
        try:
            img.load()
        except Exception as exc:  # noqa: BLE001 - OSError "image file is truncated", SyntaxError, ...
            raise ImageDecodeError(name, f"truncated or corrupt image data ({exc})") from None
    if frames > 1:
        conversions.append(f"first frame of {frames}")
    oriented = ImageOps.exif_transpose(img)
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (1, None) and oriented is not None:
        conversions.append(f"exif orientation {orientation} applied")
        img = oriented
    img = _to_srgb(img, conversions)
    img = _to_rgb(img, conversions)
    return DecodedImage(img, fmt, original_mode, (width, height), conversions)


def _to_srgb(img: Image.Image, conversions: list[str]) -> Image.Image:
    """Apply an embedded ICC profile (CMYK and wide-gamut RGB files look wrong without it)."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception:  # noqa: BLE001 - a broken profile should not lose the image
        conversions.append("icc profile unreadable, ignored")
        return img
    conversions.append(f"icc profile {img.mode}->sRGB")
    return out


def _to_rgb(img: Image.Image, conversions: list[str]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        conversions.append("palette with transparency->RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        conversions.append(f"{mode} alpha composited on white")
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        conversions.append(f"{mode} scaled to 8-bit")
        return Image.fromarray(_to_uint8(np.asarray(img), mode)).convert("RGB")
    label = {"L": "grayscale", "1": "bilevel", "P": "palette", "CMYK": "CMYK"}.get(mode, mode)
    conversions.append(f"{label}->RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float single-channel data -> uint8, preserving the meaning of the range."""
    arr = arr.astype(np.float64)
    if mode.startswith("I;16") or (mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535):
        scaled = arr / 65535.0 * 255.0         # the usual case: 16-bit PNG/TIFF data
    elif mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        scaled = arr * 255.0
    else:                                       # unknown range: stretch what is there
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Largest centred square, resized to size x size (Lanczos)."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = img.crop((left, top, left + side, top + side))
    if side == size:
        return square
    return square.resize((size, size), Image.Resampling.LANCZOS)


def decode_pixels(data: bytes, name: str, size: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of an image file -> uint8 (H, W, 3) array through `decode_image`; with `size`, its centred square
    resized to size x size (`center_crop_resize`). Dataset shards, pairs and the training stream read through it."""
    image = decode_image(data, name, max_pixels)
    if size is not None:
        image = center_crop_resize(image, size)
    return np.array(image, dtype=np.uint8)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
