"""Conversions between generator tensors, 8-bit pixels and PNG bytes, and simple image grids.

Generator images are float NCHW in [-1, 1]. Every stage that writes pixels quantises through
`to_uint8`, so "re-render exactly" means: same tensor -> same `to_uint8` output.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fstrain.data.images import decode_pixels


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) in [-1, 1] -> uint8 (N, H, W, 3) or (H, W, 3)."""
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.movedim(-3, -1).numpy()


def from_uint8(pixels: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) or (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    array = np.asarray(pixels)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels of shape (N, H, W, 3); got {array.dtype} {array.shape}")
    return torch.from_numpy(array.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pil_to_tensor(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL image -> (1, 3, size, size) in [-1, 1] (resized with Lanczos when `size` is given)."""
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return from_uint8(np.asarray(image))


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes (lossless, so decode_png(encode_png(p)) == p)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes, name: str = "image") -> np.ndarray:
    """Image bytes -> uint8 (H, W, 3), through the one decoder (fstrain.data.images)."""
    return decode_pixels(data, name)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, 3, H, W) to size x size; area pooling when shrinking (no aliasing), bilinear when growing."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if images.shape[-1] > size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


LABEL_STRIP = 14   # px of header above the cells when a grid names its columns


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], pad: int = 2,
               background: tuple[int, int, int] = (255, 255, 255),
               column_labels: Sequence[str] | None = None) -> Image.Image:
    """Tile uint8 (H, W, 3) cells into a PIL image; `None` cells stay blank. Cells may differ in size.

    `column_labels` adds a header strip naming each column, so a person reading the sheet knows what is where.
    """
    if not rows or not any(rows):
        raise ValueError("image_grid needs at least one row with one cell")
    cells = [cell for row in rows for cell in row if cell is not None]
    cell_h = max(cell.shape[0] for cell in cells)
    cell_w = max(cell.shape[1] for cell in cells)
    n_cols = max(len(row) for row in rows)
    top = LABEL_STRIP if column_labels else 0
    sheet = Image.new("RGB", (n_cols * (cell_w + pad) + pad, top + len(rows) * (cell_h + pad) + pad), background)
    if column_labels:
        from PIL import ImageDraw
        draw = ImageDraw.Draw(sheet)
        for c, label in enumerate(column_labels):
            draw.text((pad + c * (cell_w + pad) + 2, 1), str(label)[: max(1, cell_w // 6)], fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            if cell is None:
                continue
            tile = Image.fromarray(cell, "RGB")
            if tile.size != (cell_w, cell_h):
                tile = tile.resize((cell_w, cell_h), Image.LANCZOS)
            sheet.paste(tile, (pad + c * (cell_w + pad), top + pad + r * (cell_h + pad)))
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
