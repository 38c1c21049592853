"""The world's evaluation reader: one small conv net (`fstrain.models.reader.ImageReader`) trained on EVAL
identities in all six domains to read identity attributes, view, domain and landmarks. Its heads are the
attribute reader; its pooled trunk features are the evaluation feature net for FID (the Inception role: the
pool features of a net trained to recognise what images show).

It is an *evaluation* instrument: another architecture (plain conv + BN, no AlexNet / IResNet), other
identities (EVAL, not TRAIN) and another seed than every training-loss net.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fstrain.data.synthetic import DOMAINS
from fstrain.models.reader import ImageReader
from fstrain.world.attributes import CATEGORIES, IDENTITY_COLOUR_DOMAINS, colour_error
from fstrain.world.reading import HEAD_WEIGHTS, batch_targets, head_loss, head_widths, index_targets
from fstrain.world.splits import IdentitySet, WorldBatch, render_batch
from fstrain.world.training import BudgetSchedule, Log, batches, recent_mean, train_budgeted


@dataclass
class ReaderSettings:
    widths: tuple[int, ...] = (32, 64, 128, 256)
    input_size: int = 48            # images are resized to this (a third of the 64 px cost; glasses still visible)
    batch_size: int = 64
    lr: float = 3e-3
    max_steps: int = 10000          # the time budget stops it first on a 2-core CPU
    # Hair style is the reader's weakest attribute: nearly all its errors are short vs buzz, which differ only in
    # the cap's colour (buzz: hair mixed 45 % toward skin) and four strands under a pixel wide at 64 px.
    head_weights: tuple[tuple[str, float], ...] = (*HEAD_WEIGHTS.items(), ("hair_style", 2.0))


def new_reader(s: ReaderSettings, size: int, seed: int) -> ImageReader:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ImageReader(s.widths, head_widths(), input_size=min(size, s.input_size))


def train_reader(data: WorldBatch, s: ReaderSettings, seed: int, budget_s: float, log: Log = print
                 ) -> tuple[ImageReader, dict[str, Any]]:
    net = new_reader(s, data.images.shape[1], seed)
    images, target = data.tensor(), batch_targets(data)
    optim = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=1e-4)
    schedule = BudgetSchedule(budget_s, s.max_steps, min_steps=5)
    net.train()
    order = batches(len(images), s.batch_size, torch.Generator().manual_seed(seed))
    weights = dict(s.head_weights)
    history = train_budgeted(optim, s.lr, schedule, order,
                             lambda idx: (head_loss(net(images[idx]), index_targets(target, idx), weights), {}),
                             seed, log, "reader (reading loss)")
    net.eval().requires_grad_(False)
    info = {"images": len(images), "steps": schedule.step, "seconds": round(schedule.elapsed(), 1),
            "final_reading_loss": round(recent_mean(history["loss"]), 4), "seed": seed,
            "widths": list(s.widths), "head_weights": weights}
    return net, info


def validation_set(identity_set: IdentitySet, identities: int, size: int) -> WorldBatch:
    """Every identity in every domain, one view each (view indices past any training view)."""
    ids = np.repeat(np.arange(identities), len(DOMAINS))
    domains = [DOMAINS[i % len(DOMAINS)] for i in range(len(ids))]
    views = 1000 + np.arange(len(ids)) % len(DOMAINS)
    return render_batch(identity_set, ids, views, domains, size)


@torch.no_grad()
def read_attributes(net: ImageReader, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    outs = [net(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def attribute_scores(net: ImageReader, data: WorldBatch) -> dict[str, dict[str, float]]:
    """Per domain: accuracy of each categorical attribute, face-shape MAE (fraction of its range) and colour
    errors (fraction of the colour's range there); identity colours only where the domain keeps them."""
    predicted = read_attributes(net, data.tensor())
    target = batch_targets(data)
    domains = np.asarray(data.domain)
    out: dict[str, dict[str, float]] = {}
    for domain in DOMAINS:
        rows = torch.from_numpy(np.flatnonzero(domains == domain))
        if len(rows) == 0:
            continue
        scores: dict[str, float] = {}
        for name in CATEGORIES:
            scores[f"{name}_accuracy"] = round(float((predicted[name][rows].argmax(1) == target[name][rows])
                                                     .double().mean()), 4)
        scores["face_shape_error"] = round(float((predicted["face_shape"][rows] - target["face_shape"][rows])
                                                 .abs().mean()), 4)
        for colour in ("painted_skin", "painted_hair", "skin", "hair"):
            if colour in IDENTITY_COLOUR_DOMAINS and domain not in IDENTITY_COLOUR_DOMAINS[colour]:
                continue
            scores[f"{colour}_error"] = round(colour_error(predicted[colour][rows].numpy(),
                                                           target[colour][rows].numpy()), 4)
        out[domain] = scores
    return out
