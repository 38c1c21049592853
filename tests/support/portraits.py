"""Synthetic portraits for any test that needs faces: photos (aligned or not) and style-domain images.

Plain functions (`portrait_photos`, `style_images`, `write_portraits`) plus session fixtures. Identity k of a
seed is the same person in every domain; photo and style helpers default to different seeds so that a
"style dataset" and a "photo set" are unpaired unless a test asks otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from fstrain.data.synthetic import STYLE_DOMAINS, generate


class Portrait(NamedTuple):
    key: str
    image: Image.Image      # RGB
    meta: dict              # identity, view, landmarks (5, 2) in pixels, palette, ...

    @property
    def landmarks(self) -> np.ndarray:
        return np.asarray(self.meta["landmarks"], dtype=np.float64)

    def array(self) -> np.ndarray:
        """HxWx3 uint8."""
        return np.asarray(self.image)

    def tensor(self):
        """1x3xHxW float32 in [-1, 1] (StyleGAN convention)."""
        import torch
        return torch.from_numpy(self.array().copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def portrait_photos(n: int, size: int = 64, seed: int = 0, aligned: bool = True) -> list[Portrait]:
    return [Portrait(*item) for item in generate("photo", n, size, seed, aligned=aligned)]


def style_images(domain: str, n: int, size: int = 64, seed: int = 1000) -> list[Portrait]:
    return [Portrait(*item) for item in generate(domain, n, size, seed)]


def write_portraits(folder: Path, domain: str, n: int, size: int = 64, seed: int = 0,
                    aligned: bool = True) -> list[Path]:
    """Write `<key>.png` + `<key>.json` into `folder` (like the command does); returns the PNG paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, image, meta in generate(domain, n, size, seed, aligned=aligned):
        image.save(folder / f"{key}.png")
        (folder / f"{key}.json").write_text(json.dumps(meta))
        paths.append(folder / f"{key}.png")
    return paths


@pytest.fixture(scope="session")
def synthetic_photos() -> list[Portrait]:
    """Four aligned 64 px photos (seed 0)."""
    return portrait_photos(4, 64, 0)


@pytest.fixture(scope="session")
def synthetic_styles() -> dict[str, list[Portrait]]:
    """Four aligned 64 px images per style domain (seed 1000)."""
    return {domain: style_images(domain, 4, 64, 1000) for domain in STYLE_DOMAINS}
