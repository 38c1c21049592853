"""Toonify layer swap (Pinkney & Adler 2020): one generator whose synthesis layers up to a resolution come from one
model and the layers above it from another.

Both inputs are StyleGAN2 generators of the same architecture in rosinality's layout, here the base G and its
unconstrained fine-tune G* (the baseline row). Which model gives which half is the point of disagreement between
the paper that cites Toonify and Toonify's own code, so both directions are named and the study runs both:

- `structure_from_base`: layers at resolutions <= `swap_resolution` from the base G (pose, face shape), the finer
  layers from G* (texture, colour of the style). What the seed paper's text describes.
- `structure_from_style`: layers <= `swap_resolution` from G* (the style's geometry), finer layers from the base G
  (photo-realistic texture). What the Toonify code (`blend_models`) does: "low-res from the cartoon model,
  high-res from FFHQ".

A layer's resolution is that of the feature map it writes: `input`, `conv1`, `to_rgb1` work at 4 px; `convs.{2k,
2k+1}` and `to_rgbs.k` at 2^(k+3) px; `noises.noise_j` has its own size. The mapping network (`style.*`) always
comes from the base G: the photo's code comes from E_w+, which inverts into the base G's W space, so the swapped
model must read W the way the base G does. A hard swap (Toonify's blend with an infinitely sharp sigmoid).
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

DIRECTIONS = ("structure_from_base", "structure_from_style")
DIRECTION_LABELS = {"structure_from_base": "Toonify (low-res from G, high-res from G*)",
                    "structure_from_style": "Toonify (low-res from G*, high-res from G)"}

_SYNTHESIS_KEY = re.compile(r"^(input|conv1|to_rgb1|convs\.(\d+)|to_rgbs\.(\d+)|noises\.noise_(\d+))(?:\.|$)")


def key_resolution(key: str) -> int | None:
    """The feature-map resolution a state-dict key works at, or None for the mapping network (`style.*`)."""
    if key.startswith("style."):
        return None
    match = _SYNTHESIS_KEY.match(key)
    if match is None:
        raise ValueError(f"state-dict key {key!r} is not a rosinality StyleGAN2 generator key")
    head, conv, rgb, noise = match.groups()
    if head in ("input", "conv1", "to_rgb1"):
        return 4
    if conv is not None:
        return 2 ** (int(conv) // 2 + 3)
    if rgb is not None:
        return 2 ** (int(rgb) + 3)
    return 2 ** ((int(noise) + 5) // 2)     # noise_0 = 4 px, noise_1/2 = 8 px, ...


def swap_resolutions(size: int) -> list[int]:
    """The meaningful swap points of a `size` px generator: 4, 8, ..., size/2 (size itself would swap nothing)."""
    out, resolution = [], 4
    while resolution < size:
        out.append(resolution)
        resolution *= 2
    return out


def layer_swap(base: nn.Module, finetuned: nn.Module, swap_resolution: int, direction: str) -> nn.Module:
    """A new generator: layers <= `swap_resolution` from one model, the rest from the other (see module doc)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown layer-swap direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    if base.architecture() != finetuned.architecture():
        raise ValueError(f"layer swap needs two generators of one architecture; got {base.architecture()} and "
                         f"{finetuned.architecture()}")
    valid = swap_resolutions(base.size)
    if swap_resolution not in valid:
        raise ValueError(f"swap resolution {swap_resolution} is not one of {valid} for a {base.size} px generator")
    low, high = (base, finetuned) if direction == "structure_from_base" else (finetuned, base)
    base_state, low_state, high_state = base.state_dict(), low.state_dict(), high.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for key in base_state:
        resolution = key_resolution(key)
        source = base_state if resolution is None else low_state if resolution <= swap_resolution else high_state
        merged[key] = source[key].detach().clone()
    swapped = copy.deepcopy(base)
    swapped.load_state_dict(merged, strict=True)
    return swapped.eval()
