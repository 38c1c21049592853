"""The world's perceptual net (the LPIPS role): an AlexNet trunk trained on world images, LPIPS heads calibrated
on two-alternative forced-choice (2AFC) triplets that the world labels itself.

Trunk: `lpips.LPIPS(net="alex")`'s own trunk (torchvision AlexNet `features`, behind LPIPS's input scaling),
trained on images of all six domains (each identity in several views of one domain) with two losses: reading
what the world drew (identity attributes, view, domain and landmarks, `fstrain.world.reading`) from the spatially
pooled relu1..relu5 maps plus the flattened relu5 map, so every layer the LPIPS distance uses carries world
structure; and a triplet loss on the LPIPS distance itself (uniform heads): the same person in another view must
be nearer than another person in the same domain.

Heads: a 2AFC triplet is a reference (identity A in view v, one domain) and two distortions X0, X1 of it in the
same domain: each moves A's parameters a random fraction towards another random identity, and half of them also
show the person in another view (expression, gaze, light, background). The world's label is which distortion is
nearer the reference in parameter space: identity distance (z-scored numeric parameters and colour channels,
categorical flips counting 2) plus VIEW_WEIGHT x view distance (z-scored smile, eye openness, gaze, light
direction and background colours, a background-kind flip counting 2), so the same person under another light
or backdrop counts as near and another person as far, whatever the pixels say. The five linear heads (non-negative 1x1 weights on LPIPS's squared normalised feature
differences) are fitted by logistic regression of log(d1 / d0) on that label, and saved inside the trunk file
under `lpips_lin.*` keys, which `fstrain.models.perceptual.load_lpips` uses when no other heads are given.

Domain balance: 2AFC choices are scale-free per triplet, so a plain fit is free to weight the channels that respond
to photo grain. The first shipped heads did that: different people in anime, fantasy and illustration came out
~300x nearer than in photos (0.003 vs 1.4), as near as a flat grey image, so L_pair and GT distances in those styles
measured nothing and L_sem(photo, style) only pulled G' back towards photo texture. The fit therefore also
penalises the variance over domains of log(mean distance), which keeps one scale for all six domains.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fstrain.data.synthetic import DOMAINS, Identity, View, render
from fstrain.models.perceptual import EMBEDDED_HEADS_PREFIX, trunk_key_map
from fstrain.models.registry import save_json, save_torch
from fstrain.world.reading import HEADS, batch_targets, head_loss, head_widths, index_targets
from fstrain.world.splits import IdentitySet, WorldBatch, to_tensor, view_of
from fstrain.world.training import BudgetSchedule, Log, recent_mean, train_budgeted

CATEGORICAL = ("hair_style", "bangs", "glasses", "glasses_round")
VIEW_WEIGHT = 0.3        # a full change of view counts about as much as moving 15 % of the way to another person


def new_lpips(seed: int) -> nn.Module:
    """lpips.LPIPS(alex) with a seeded random trunk and uniform (all-ones) heads."""
    import lpips
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(seed)
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    for lin in model.lins:
        nn.init.ones_(lin.model[-1].weight)
    return model


class TrunkReader(nn.Module):
    """LPIPS's scaled AlexNet trunk with reading heads on [pooled relu1..5, flattened relu5]."""

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        with torch.no_grad():
            outs = self.layers(torch.zeros(1, 3, size, size))
        width = sum(o.shape[1] for o in outs) + outs[-1][0].numel()
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in head_widths().items()})

    def layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model.net(self.model.scaling_layer(images)))

    def read(self, outs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = torch.cat([o.mean((2, 3)) for o in outs] + [outs[-1].flatten(1)], 1)
        return {name: head(feats) for name, head in self.heads.items()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.read(self.layers(images))


@dataclass
class PerceptualSettings:
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int = 3000
    triplets: int = 1200            # calibration triplets (TRAIN identities)
    heldout_triplets: int = 600     # 2AFC validation triplets (HELDOUT identities)
    triplet_weight: float = 4.0     # metric loss: LPIPS(x, same person other view) + margin < LPIPS(x, other person)
    triplet_margin: float = 0.05


def train_trunk(data: WorldBatch, s: PerceptualSettings, seed: int, budget_s: float, log: Log = print
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Train the AlexNet trunk of a fresh lpips.LPIPS on `data` (each identity in several views of one domain);
    returns (lpips model, info)."""
    model = new_lpips(seed)
    model.net.requires_grad_(True)
    reader = TrunkReader(model, data.images.shape[1])
    images, target = data.tensor(), batch_targets(data)
    groups = _identity_groups(data)
    params = list(model.net.parameters()) + list(reader.heads.parameters())
    optim = torch.optim.AdamW(params, lr=s.lr, weight_decay=1e-4)
    schedule = BudgetSchedule(budget_s, s.max_steps, min_steps=5)
    rng = np.random.default_rng(seed)
    reader.train()
    model.lins.eval()     # their dropout stays off: the distance the trunk is trained on is the one it is used with

    def compute(_: Any) -> tuple[torch.Tensor, dict[str, float]]:
        anchors, partners = _pair_batch(groups, s.batch_size // 2, rng)
        idx = torch.from_numpy(np.concatenate([anchors, partners]))
        outs = reader.layers(images[idx])
        loss = head_loss(reader.read(outs), index_targets(target, idx))
        # The LPIPS distance itself (uniform heads): the same person in another view (partner) must be nearer
        # than the next anchor, another person in the same domain.
        n = len(anchors)
        first = [o[:n] for o in outs]
        near = lpips_distance(model, first, [o[n:] for o in outs])
        far = lpips_distance(model, first, [o[:n].roll(1, 0) for o in outs])
        loss = loss + s.triplet_weight * F.relu(s.triplet_margin + near - far).div(far.detach().mean() + 1e-6).mean()
        return loss, {"same person nearer": float((near < far).float().mean())}

    history = train_budgeted(optim, s.lr, schedule, itertools.repeat(None), compute, seed, log, "perceptual trunk")
    model.eval().requires_grad_(False)
    info = {"images": len(images), "steps": schedule.step, "seconds": round(schedule.elapsed(), 1),
            "final_loss": round(recent_mean(history["loss"]), 4),
            "final_same_person_nearer": round(recent_mean(history["same person nearer"]), 4), "seed": seed,
            "heads_trained_on": sorted(HEADS)}
    return model, info


def lpips_distance(model: nn.Module, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
    """lpips.LPIPS's distance from already computed trunk outputs: (N,)."""
    import lpips
    total = 0
    for lin, a, b in zip(model.lins, fa, fb):
        total = total + lin((lpips.normalize_tensor(a) - lpips.normalize_tensor(b)).pow(2)).mean((1, 2, 3))
    return total


def _identity_groups(data: WorldBatch) -> dict[str, list[np.ndarray]]:
    """Per domain: for each identity with at least two images there, its rows."""
    groups: dict[str, list[np.ndarray]] = {}
    domains = np.asarray(data.domain)
    for domain in DOMAINS:
        rows = np.flatnonzero(domains == domain)
        by_id: dict[int, list[int]] = {}
        for row in rows:
            by_id.setdefault(int(data.identity_index[row]), []).append(int(row))
        pairs = [np.asarray(r) for r in by_id.values() if len(r) >= 2]
        if len(pairs) >= 2:
            groups[domain] = pairs
    if not groups:
        raise ValueError("the perceptual trunk needs identities with two or more views in one domain")
    return groups


def _pair_batch(groups: dict[str, list[np.ndarray]], n: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """n (anchor, partner) rows: n distinct identities of one random domain, two of its views each."""
    domain = list(groups)[rng.integers(len(groups))]
    people = groups[domain]
    chosen = rng.choice(len(people), min(n, len(people)), replace=False)
    pairs = np.stack([rng.choice(people[c], 2, replace=False) for c in chosen])
    return pairs[:, 0], pairs[:, 1]


# ---------------------------------------------------------------- 2AFC triplets labelled by the world


def _numeric_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Identity) if f.name not in CATEGORICAL + ("identity_id",)]


def parameter_scale(identity_set: IdentitySet, n: int = 500) -> dict[str, np.ndarray]:
    """Per-dimension standard deviation of every numeric identity parameter over `n` identities."""
    values: dict[str, list] = {name: [] for name in _numeric_fields()}
    for k in range(n):
        identity = identity_set.identity(k)
        for name in values:
            values[name].append(np.atleast_1d(np.asarray(getattr(identity, name), np.float64)))
    return {name: np.maximum(np.std(v, axis=0), 1e-6) for name, v in values.items()}


def parameter_distance(a: Identity, b: Identity, scale: dict[str, np.ndarray]) -> float:
    total = sum(float((((np.atleast_1d(np.asarray(getattr(a, k), np.float64)) -
                         np.atleast_1d(np.asarray(getattr(b, k), np.float64))) / s) ** 2).sum())
                for k, s in scale.items())
    total += sum(4.0 for k in CATEGORICAL if getattr(a, k) != getattr(b, k))   # a flip counts 2 (squared: 4)
    return float(np.sqrt(total))


def blend(a: Identity, b: Identity, t: float, rng: np.random.Generator) -> Identity:
    """A's parameters moved a fraction t towards B's (categorical ones switch to B's with probability t)."""
    changes: dict[str, Any] = {}
    for name in _numeric_fields():
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, tuple):
            changes[name] = tuple(int(round(x + (y - x) * t)) for x, y in zip(va, vb))
        else:
            changes[name] = float(va + (vb - va) * t)
    for name in CATEGORICAL:
        changes[name] = getattr(b, name) if rng.random() < t else getattr(a, name)
    return dataclasses.replace(a, **changes)


def view_vector(view: View) -> np.ndarray:
    """The view's perceptible parameters, each scaled to unit-ish spread (texture seed and pose excluded)."""
    bg = np.asarray(view.background, np.float64).reshape(-1) / 255 / 0.2
    return np.concatenate([[view.smile / 0.29, (view.eye_openness - 0.65) / 0.1, view.gaze[0] / 0.58,
                            view.gaze[1] / 0.35, np.cos(view.light_angle) / 0.71, np.sin(view.light_angle) / 0.71],
                           bg])


def view_distance(a: View, b: View) -> float:
    flip = 4.0 if a.background_kind != b.background_kind else 0.0
    return float(np.sqrt(((view_vector(a) - view_vector(b)) ** 2).sum() + flip))


@dataclass
class Triplets:
    reference: np.ndarray     # (N, S, S, 3) uint8
    first: np.ndarray
    second: np.ndarray
    first_closer: np.ndarray  # (N,) bool: the world's label
    distances: np.ndarray     # (N, 2) parameter distances of first / second to the reference
    domain: list[str]


def make_triplets(identity_set: IdentitySet, count: int, size: int, seed: int,
                  scale: dict[str, np.ndarray]) -> Triplets:
    """`count` triplets over identities 0..count-1 of `identity_set`, domains cycling through all six."""
    rng = np.random.default_rng([seed, 2, 15])
    refs, firsts, seconds, labels, dists, domains = [], [], [], [], [], []
    for k in range(count):
        domain = DOMAINS[k % len(DOMAINS)]
        a = identity_set.identity(k)
        view = view_of(identity_set, k, 500)
        others = rng.choice(np.arange(count, identity_set.count), 2, replace=False)
        pair = [blend(a, identity_set.identity(int(o)), float(rng.uniform(0.02, 0.5)), rng) for o in others]
        views = [view_of(identity_set, k, 501 + j) if rng.random() < 0.5 else view for j in range(2)]
        d = [parameter_distance(a, x, scale) + VIEW_WEIGHT * view_distance(view, w) for x, w in zip(pair, views)]
        images = [np.asarray(render(x, w, domain, size)[0].convert("RGB"))
                  for x, w in zip([a] + pair, [view] + views)]
        refs.append(images[0])
        firsts.append(images[1])
        seconds.append(images[2])
        labels.append(d[0] < d[1])
        dists.append(d)
        domains.append(domain)
    return Triplets(np.stack(refs), np.stack(firsts), np.stack(seconds), np.asarray(labels), np.asarray(dists),
                    domains)


@torch.no_grad()
def channel_differences(model: nn.Module, a: np.ndarray, b: np.ndarray, batch_size: int = 128) -> torch.Tensor:
    """Per channel of every LPIPS layer: spatial mean of the squared difference of unit-normalised features."""
    import lpips
    out = []
    for i in range(0, len(a), batch_size):
        fa = model.net(model.scaling_layer(to_tensor(a[i:i + batch_size])))
        fb = model.net(model.scaling_layer(to_tensor(b[i:i + batch_size])))
        out.append(torch.cat([(lpips.normalize_tensor(x) - lpips.normalize_tensor(y)).pow(2).mean((2, 3))
                              for x, y in zip(fa, fb)], 1))
    return torch.cat(out).double()


def head_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([lin.model[-1].weight.detach().reshape(-1) for lin in model.lins]).double()


def set_heads(model: nn.Module, weights: torch.Tensor) -> None:
    start = 0
    for lin in model.lins:
        w = lin.model[-1].weight
        w.data.copy_(weights[start:start + w.numel()].reshape(w.shape).to(w.dtype))
        start += w.numel()


def two_afc(model: nn.Module, triplets: Triplets) -> dict[str, Any]:
    """Agreement of the model's choice (smaller distance) with the world's label, overall and per domain."""
    w = head_vector(model)
    d0 = channel_differences(model, triplets.reference, triplets.first) @ w
    d1 = channel_differences(model, triplets.reference, triplets.second) @ w
    return _agreement(d0.numpy(), d1.numpy(), triplets)


def people_pairs(data: WorldBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """(images, anchor, partner, other, anchor domains) of `data`: n consecutive identities in two views each,
    identity k in domain k % 6 (`render_domain_per_identity`); the partner is identity k in its other view, the
    other person is identity k + 6 (same domain) in the anchor's view index."""
    ids = data.identity_index - data.identity_index.min()
    count = int(ids.max()) + 1 - len(DOMAINS)
    anchor = torch.as_tensor([np.flatnonzero(ids == k)[0] for k in range(count)])
    partner = torch.as_tensor([np.flatnonzero(ids == k)[1] for k in range(count)])
    other = torch.as_tensor([np.flatnonzero(ids == k + len(DOMAINS))[0] for k in range(count)])
    return data.tensor(), anchor, partner, other, np.asarray(data.domain)[anchor.numpy()]


@torch.no_grad()
def same_person_two_afc(metric: Any, data: WorldBatch) -> dict[str, Any]:
    """How often `metric(x, y)` puts the same person in another view nearer than another person (same domain).

    `data` as `people_pairs` reads it."""
    images, anchor, partner, other, domains = people_pairs(data)
    near = metric(images[anchor], images[partner]).reshape(-1)
    far = metric(images[anchor], images[other]).reshape(-1)
    hits = (near < far).double().numpy()
    return {"agreement": round(float(hits.mean()), 4), "triplets": len(anchor),
            "per_domain": {d: round(float(hits[domains == d].mean()), 4) for d in DOMAINS if (domains == d).any()}}


def pixel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean((1, 2, 3))


def pixel_two_afc(triplets: Triplets) -> dict[str, Any]:
    """The same score for plain pixel L2 (a baseline any perceptual net should beat)."""
    ref = triplets.reference.astype(np.float64)
    d0 = ((ref - triplets.first) ** 2).mean((1, 2, 3))
    d1 = ((ref - triplets.second) ** 2).mean((1, 2, 3))
    return _agreement(d0, d1, triplets)


def _agreement(d0: np.ndarray, d1: np.ndarray, triplets: Triplets) -> dict[str, Any]:
    score = np.where(d0 == d1, 0.5, ((d0 < d1) == triplets.first_closer).astype(np.float64))
    domains = np.asarray(triplets.domain)
    return {"agreement": round(float(score.mean()), 4), "triplets": int(len(score)),
            "per_domain": {d: round(float(score[domains == d].mean()), 4) for d in DOMAINS if (domains == d).any()}}


DOMAIN_BALANCE = 1.0    # weight of var_domains(log mean distance) in the head fit; 1 was the first value tried


def calibrate_heads(model: nn.Module, triplets: Triplets, seed: int, steps: int = 600,
                    balance_weight: float = DOMAIN_BALANCE, log: Log = print) -> dict[str, Any]:
    """Fit non-negative head weights so that log(d1 / d0) predicts the world's 2AFC label (logistic regression),
    with every domain's mean distance kept on one scale (see the module docstring: domain balance)."""
    x0 = channel_differences(model, triplets.reference, triplets.first).float()
    x1 = channel_differences(model, triplets.reference, triplets.second).float()
    label = torch.from_numpy(triplets.first_closer.astype(np.float32))
    domains = np.asarray(triplets.domain)
    masks = [torch.from_numpy(domains == d) for d in DOMAINS if (domains == d).any()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        raw = torch.zeros(x0.shape[1], requires_grad=True)        # weights = softplus(raw) / log 2 >= 0, start 1
        temperature = torch.tensor(1.0, requires_grad=True)
        optim = torch.optim.Adam([raw, temperature], lr=0.05)
        for _ in range(steps):
            w = F.softplus(raw) / np.log(2.0)
            logit = temperature * (torch.log(x1 @ w + 1e-8) - torch.log(x0 @ w + 1e-8))
            loss = F.binary_cross_entropy_with_logits(logit, label) + 1e-2 * (w - 1).pow(2).mean()
            if balance_weight and len(masks) > 1:
                typical = (x0 @ w + x1 @ w) / 2
                loss = loss + balance_weight * torch.stack([typical[m].mean().log() for m in masks]).var()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
    weights = (F.softplus(raw) / np.log(2.0)).detach().double()
    set_heads(model, weights)
    loss = float(loss.detach())
    log(f"  LPIPS heads calibrated on {len(label)} world 2AFC triplets: loss {loss:.4f}")
    return {"triplets": int(len(label)), "loss": round(loss, 4), "steps": steps, "domain_balance": balance_weight}


@torch.no_grad()
def domain_scales(metric: Any, data: WorldBatch) -> dict[str, Any]:
    """Mean `metric` distance between different people of each domain (same view index), and the largest ratio
    between two domains: a loss weight means the same in every style only when that ratio is small.

    `data` as `people_pairs` reads it."""
    images, anchor, _, other, domains = people_pairs(data)
    far = metric(images[anchor], images[other]).reshape(-1).double().numpy()
    per = {d: float(far[domains == d].mean()) for d in DOMAINS if (domains == d).any()}
    return {"per_domain": {d: round(v, 4) for d, v in per.items()},
            "max_over_min": round(max(per.values()) / max(min(per.values()), 1e-12), 2)}


TARGET_DISTANCE = 0.5   # mean LPIPS between two different people of one domain (ImageNet LPIPS-alex: ~0.4-0.6)


@torch.no_grad()
def rescale_heads(model: nn.Module, data: WorldBatch, target: float = TARGET_DISTANCE, pairs: int = 256
                  ) -> dict[str, float]:
    """Scale all heads by one factor so that different people of one domain are `target` apart on average.

    2AFC choices do not depend on the scale, but every loss weight tuned for LPIPS does: a trunk trained with a
    scale-free objective can end with normalised-feature differences of ~1e-4, which would make L_sem vanish."""
    groups = _identity_groups(data)
    first, second = [], []
    for people in groups.values():
        for a, b in zip(people[:-1], people[1:]):
            first.append(a[0])
            second.append(b[0])
    first, second = first[:pairs], second[:pairs]
    images = to_tensor(data.images[np.asarray(first + second)])
    n = len(first)
    before = float(model(images[:n], images[n:]).mean())
    factor = target / max(before, 1e-12)
    if not math.isfinite(factor) or not math.isfinite(before):
        raise ValueError(f"perceptual heads: mean distance between different people is {before}; the trunk "
                         f"collapsed, so no head scale can calibrate it (train longer or lower the learning rate)")
    set_heads(model, head_vector(model) * factor)
    return {"pairs": n, "mean_distance_before": before, "factor": factor, "target": target}


def save_perceptual(uri: str, model: nn.Module, metadata: dict[str, Any], half: bool = True) -> str:
    """torchvision AlexNet `features.N.*` keys (+ the calibrated heads under `lpips_lin.*`), and a JSON sidecar."""
    mapping = trunk_key_map(model)
    state = {tv: (v.half() if half else v) for lp, tv in mapping.items() for v in [model.state_dict()[lp]]}
    # Heads stay float32: after rescaling they can exceed float16's range (65504), and an inf head turns
    # LPIPS(x, x) = inf * 0 into NaN.
    for i, lin in enumerate(model.lins):
        state[f"{EMBEDDED_HEADS_PREFIX}lin{i}.model.1.weight"] = lin.model[-1].weight.float()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_torch(state, uri)
    save_json({"format": "torchvision-alexnet-features", "net": "alex", "random_init": False, **metadata},
              uri + ".json")
    return uri
