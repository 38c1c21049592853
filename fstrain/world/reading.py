"""What a world image shows, as supervised targets for a net that reads it (perceptual trunk, attribute reader).

`HEADS` names every target with its kind and width: identity attributes (`fstrain.world.attributes`), the view
(smile, eye openness, gaze, light direction), the domain, and the landmarks (x, y / size) of the eyes, nose tip and mouth corners. `head_loss` sums
cross-entropy for categorical heads and mean squared error (scaled to ~unit variance) for continuous ones.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fstrain.data.synthetic import DOMAINS, LANDMARK_NAMES
from fstrain.world.attributes import CATEGORIES, targets
from fstrain.world.splits import WorldBatch

N_LANDMARKS = len(LANDMARK_NAMES)
HEADS: dict[str, tuple[str, int]] = {
    **{name: ("class", len(values)) for name, values in CATEGORIES.items()},
    "domain": ("class", len(DOMAINS)),
    "face_shape": ("regress", 3),
    "skin": ("regress", 3), "hair": ("regress", 3),
    "painted_skin": ("regress", 3), "painted_hair": ("regress", 3),
    "view": ("regress", 6),
    "landmarks": ("regress", 2 * N_LANDMARKS),
}
# Continuous targets are mostly in 0..1 with spreads of ~0.1-0.3; this weight puts their MSE on the scale of a
# cross-entropy.
REGRESSION_WEIGHT = 3.0
# Glasses are worn by a quarter of the world and drawn with thin lines: weighted up so the reader attends to them.
HEAD_WEIGHTS = {"glasses": 3.0}


def head_widths() -> dict[str, int]:
    return {name: width for name, (_, width) in HEADS.items()}


def batch_targets(batch: WorldBatch) -> dict[str, torch.Tensor]:
    """Every HEADS target for each image of `batch`."""
    out = {k: torch.from_numpy(v) for k, v in targets(batch.identities, batch.metas).items()}
    out["domain"] = torch.tensor([DOMAINS.index(d) for d in batch.domain])
    views = [[v.smile, (v.eye_openness - 0.65) / 0.35, (v.gaze[0] + 1) / 2, (v.gaze[1] + 0.6) / 1.2,
              0.5 + 0.5 * math.cos(v.light_angle), 0.5 + 0.5 * math.sin(v.light_angle)] for v in batch.views]
    out["view"] = torch.tensor(views, dtype=torch.float32)
    size = batch.images.shape[1]
    landmarks = np.asarray([m["landmarks"] for m in batch.metas], np.float32)
    out["landmarks"] = torch.from_numpy(landmarks.reshape(len(landmarks), -1) / size)
    return out


def head_loss(predicted: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
              weights: dict[str, float] | None = None) -> torch.Tensor:
    """Weighted sum over HEADS; `weights` replaces HEAD_WEIGHTS (a head it leaves out weighs 1)."""
    weights = HEAD_WEIGHTS if weights is None else weights
    total = torch.zeros(())
    for name, (kind, _) in HEADS.items():
        weight = weights.get(name, 1.0)
        if kind == "class":
            total = total + weight * F.cross_entropy(predicted[name], target[name])
        else:
            total = total + weight * REGRESSION_WEIGHT * F.mse_loss(predicted[name], target[name])
    return total


def index_targets(target: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in target.items()}
