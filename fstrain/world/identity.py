"""Identity nets of the world: trained with an ArcFace additive angular margin on many identities x views.

Two architectures, each saved in a public layout that `fstrain.models.identity.load_identity` reads:
- "iresnet": insightface arcface_torch IResNet (the training-loss net, `identity.pth`, kind arcface);
- "irse":    pSp IR-SE (SE units; the *evaluation* identity net, trained on other identities with another seed).
The net is trained through the same `IdentityEncoder` crop + resize it is used with, on the photo domain with
views that vary expression, gaze, eye openness, light, background and (small) pose.

Verification (`verify`): unit embeddings of held-out identities, positive pairs = same person in two views,
negative pairs = two people; accuracy at the threshold chosen on the other half of the pairs (two folds), and
TAR at the threshold where FAR = 1e-3 over all negative pairs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fstrain.models.identity import IdentityEncoder, IResNet, IRSEBackbone
from fstrain.world.splits import IdentitySet, WorldBatch, render_identities
from fstrain.world.training import BudgetSchedule, Log, batches, recent_mean, train_budgeted

ARCHITECTURES = ("iresnet", "irse")


@dataclass
class IdentityNetSettings:
    arch: str = "iresnet"
    input_size: int = 32            # the crop is resized to this (multiple of 16)
    channels: tuple[int, ...] = (16, 32, 64, 128)
    units: tuple[int, ...] = (1, 1, 1, 1)
    embedding: int = 128
    identities: int = 1000
    views: int = 6
    batch_size: int = 64
    lr: float = 0.002
    margin: float = 0.4             # ArcFace m (radians)
    scale: float = 24.0             # ArcFace s
    max_steps: int = 4000


def build_identity_net(s: IdentityNetSettings, seed: int) -> IdentityEncoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if s.arch == "iresnet":
            return IdentityEncoder(IResNet(s.units, s.channels, s.input_size, num_features=s.embedding), "arcface")
        if s.arch == "irse":
            return IdentityEncoder(IRSEBackbone(s.input_size, s.units, s.channels, se=True, embedding_dim=s.embedding,
                                                drop_ratio=0.0), "irse50")
    raise ValueError(f"identity arch must be one of {ARCHITECTURES}; got {s.arch!r}")


class ArcFaceHead(nn.Module):
    """Class centres on the unit sphere; logits s*cos(theta), with theta + m for the true class."""

    def __init__(self, classes: int, dim: int, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1)).clamp(-1 + 1e-6, 1 - 1e-6)
        theta = torch.acos(cos.gather(1, labels[:, None]))
        target = torch.cos(torch.clamp(theta + self.margin, max=math.pi))
        logits = cos.scatter(1, labels[:, None], target)
        return F.cross_entropy(self.scale * logits, labels)


def train_identity_net(data: WorldBatch, s: IdentityNetSettings, seed: int, budget_s: float,
                       log: Log = print, name: str = "identity") -> tuple[IdentityEncoder, dict[str, Any]]:
    """ArcFace training on `data` (photos of identities 0..K-1, several views each); returns (net, training info)."""
    net = build_identity_net(s, seed)
    labels = torch.from_numpy(data.identity_index - data.identity_index.min())
    classes = int(labels.max()) + 1
    images = data.tensor()
    head = ArcFaceHead(classes, s.embedding, s.scale, s.margin)
    params = list(net.parameters()) + list(head.parameters())
    optim = torch.optim.AdamW([p for p in params if p.requires_grad], lr=s.lr, weight_decay=5e-4)
    schedule = BudgetSchedule(budget_s, s.max_steps, min_steps=5)
    net.train()

    def compute(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # Margin warm-up: no margin for the first tenth, so the class centres spread out before it bites.
        head.margin = s.margin * min(1.0, schedule.progress() / 0.1)
        return head(net.backbone(_crop(net, images[idx])), labels[idx]), {}

    order = batches(len(images), s.batch_size, torch.Generator().manual_seed(seed))
    history = train_budgeted(optim, s.lr, schedule, order, compute, seed, log, f"{name} (arcface loss)")
    net.eval()
    info = {"arch": s.arch, "identities": classes, "images": len(images), "steps": schedule.step,
            "seconds": round(schedule.elapsed(), 1), "final_loss": round(recent_mean(history["loss"]), 4),
            "seed": seed, "settings": {k: v for k, v in s.__dict__.items()}}
    return net, info


def _crop(net: IdentityEncoder, images: torch.Tensor) -> torch.Tensor:
    from fstrain.models.identity import _crop_and_resize
    return _crop_and_resize(images, net.crop, net.input_size)


@torch.no_grad()
def embed(net: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def verify(embeddings: torch.Tensor, identity_index: np.ndarray, seed: int, pairs: int = 3000) -> dict[str, float]:
    """1:1 verification on `pairs` positive + `pairs` negative pairs, and TAR@FAR=1e-3 over all pairs."""
    emb = F.normalize(embeddings.double(), dim=1)
    ids = torch.as_tensor(identity_index)
    sim = emb @ emb.T
    same = ids[:, None] == ids[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    pos_all, neg_all = sim[same & upper], sim[~same & upper]
    rng = np.random.default_rng(seed)
    n = min(pairs, len(pos_all), len(neg_all))      # balanced: as many positive as negative pairs
    pos = pos_all[torch.as_tensor(rng.choice(len(pos_all), n, replace=False))]
    neg = neg_all[torch.as_tensor(rng.choice(len(neg_all), n, replace=False))]
    scores = torch.cat([pos, neg]).numpy()
    truth = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    fold = rng.permutation(len(scores)) % 2
    accuracies = []
    for k in (0, 1):   # threshold chosen on one half, accuracy measured on the other
        fit, test = fold != k, fold == k
        accuracies.append(float(((scores[test] >= best_threshold(scores[fit], truth[fit])) == truth[test]).mean()))
    far_threshold = float(np.quantile(neg_all.numpy(), 1 - 1e-3))
    tar = float((pos_all > far_threshold).double().mean())
    return {"verification_accuracy": round(float(np.mean(accuracies)), 4), "tar_at_far_1e-3": round(tar, 4),
            "positive_pairs_total": int(len(pos_all)), "negative_pairs_total": int(len(neg_all)),
            "pairs_scored": int(len(scores)), "mean_positive_cosine": round(float(pos_all.mean()), 4),
            "mean_negative_cosine": round(float(neg_all.mean()), 4)}


def best_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold (midway between two sorted scores) that classifies `scores >= t` as same-person most often."""
    order = np.argsort(scores)
    s, t = scores[order], truth[order]
    # Threshold just above position i: negatives at or below i are right, positives above i are right.
    correct = np.concatenate([[t.sum()], np.cumsum(~t) + (t.sum() - np.cumsum(t))])
    cuts = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    return float(cuts[int(np.argmax(correct))])


def heldout_photos(identity_set: IdentitySet, identities: int, views: int, size: int) -> WorldBatch:
    """Aligned photos of held-out identities, views drawn past any training view index."""
    return render_identities(identity_set, identities, views, "photo", size, first_view=1000)
