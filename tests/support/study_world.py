"""A tiny RANDOM attribute reader for the study's tests: the study's attribute-error path runs on a real network,
and the report must label it RANDOM (it is; nothing here is trained)."""
from __future__ import annotations

import torch
from torch import nn

from fstrain.world.attributes import CATEGORIES


class TinyAttributeReader(nn.Module):
    random_init = True

    def __init__(self, seed: int = 0):
        super().__init__()
        self.kinds = {**{name: "categorical" for name in CATEGORIES}, "skin": "continuous", "hair": "continuous"}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.heads = nn.ModuleDict({name: nn.Linear(8, len(values)) for name, values in CATEGORIES.items()})
            self.colours = nn.ModuleDict({name: nn.Linear(8, 3) for name in ("skin", "hair")})

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(images)
        out = {name: head(features) for name, head in self.heads.items()}
        out.update({name: torch.sigmoid(head(features)) for name, head in self.colours.items()})
        return out


def load_tiny_attribute_reader(weights_uri: str, device) -> TinyAttributeReader:
    """Factory in the form the study config names ("support.study_world:load_tiny_attribute_reader")."""
    return TinyAttributeReader().to(device).eval()
