"""Who the world's instruments may see: disjoint identity sets, and batches rendered from them.

Three identity sets come from three different identity seeds of the synthetic world, so no person is in two of
them (identity k of seed s is `sample_identity(identity_rng(s, k))`):

- TRAIN     identities every *training-loss* instrument learns from (G/D, encoders, identity net, LPIPS net).
- EVAL      identities the *evaluation* nets learn from (FID feature net / attribute reader, evaluation identity
            net): different people from TRAIN, so no result is graded by a net fitted to the same data.
- HELDOUT   identities no network ever trains on; every figure of the instrument report is measured on them.

A view j of identity k (expression, gaze, eye openness, light, background, texture and, with `pose="jitter"`,
a small in-plane rotation / scale / shift of the face) comes from its own seeded generator, so a batch is the
same on every machine. Images are rendered straight at the requested size (the renderer supersamples 4x).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from fstrain.data.synthetic import DOMAINS, LATENT_DRAWS, Identity, View, identity_rng, params_from_normal, render, \
    sample_identity, sample_view, with_pose

POSES = ("aligned", "jitter")


@dataclass(frozen=True)
class IdentitySet:
    """`count` identities drawn from world seed `seed` (identity k = identity_rng(seed, k))."""
    name: str
    seed: int
    count: int

    def identity(self, index: int) -> Identity:
        if not 0 <= index < self.count:
            raise IndexError(f"identity set '{self.name}' has {self.count} identities; asked for index {index}")
        return sample_identity(identity_rng(self.seed, index), f"{self.name}{self.seed}-{index:06d}")

    def resized(self, count: int) -> "IdentitySet":
        return dataclasses.replace(self, count=count)


TRAIN = IdentitySet("train", seed=15001, count=100_000)
EVAL = IdentitySet("eval", seed=15002, count=100_000)
HELDOUT = IdentitySet("heldout", seed=15003, count=100_000)
SETS = {s.name: s for s in (TRAIN, EVAL, HELDOUT)}


def view_of(identity_set: IdentitySet, index: int, view_index: int, pose: str = "aligned") -> View:
    """View `view_index` of identity `index`: expression, gaze, light, background vary; pose as asked."""
    if pose not in POSES:
        raise ValueError(f"pose must be one of {POSES}; got {pose!r}")
    rng = np.random.default_rng([identity_set.seed, index, 2, view_index])
    view = sample_view(rng, aligned=True)
    if pose == "jitter":
        view = with_pose(view, float(rng.uniform(-6, 6)), float(rng.uniform(0.94, 1.06)),
                         (float(rng.uniform(-0.03, 0.03)), float(rng.uniform(-0.03, 0.03))), canvas=1.0)
    return view


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@dataclass
class WorldBatch:
    """Rendered images with the ground truth they were drawn from (row i of every field is image i)."""
    images: np.ndarray            # (N, size, size, 3) uint8
    identity_index: np.ndarray    # (N,) int64: index in `identity_set`
    view_index: np.ndarray        # (N,) int64
    domain: list[str]             # (N,) domain of each image
    identities: list[Identity]
    views: list[View]
    metas: list[dict]             # the renderer's metadata (landmarks, palette actually painted, ...)
    identity_set: str

    def tensor(self) -> torch.Tensor:
        """Images as (N, 3, H, W) float32 in [-1, 1]."""
        return to_tensor(self.images)

    def __len__(self) -> int:
        return len(self.images)


def render_batch(identity_set: IdentitySet, identity_indices: Sequence[int], view_indices: Sequence[int],
                 domains: Sequence[str] | str, size: int, pose: str = "aligned") -> WorldBatch:
    """Render identity_indices[i] in view view_indices[i] and domain domains[i] (or one domain for all)."""
    if len(identity_indices) != len(view_indices):
        raise ValueError(f"{len(identity_indices)} identity indices but {len(view_indices)} view indices")
    domain_list = [domains] * len(identity_indices) if isinstance(domains, str) else list(domains)
    if len(domain_list) != len(identity_indices):
        raise ValueError(f"{len(domain_list)} domains for {len(identity_indices)} images")
    for d in set(domain_list):
        if d not in DOMAINS:
            raise ValueError(f"unknown domain {d!r}; choose from {', '.join(DOMAINS)}")
    images = np.zeros((len(identity_indices), size, size, 3), np.uint8)
    identities, views, metas = [], [], []
    cache: dict[int, Identity] = {}
    for row, (k, j, d) in enumerate(zip(identity_indices, view_indices, domain_list)):
        if int(k) not in cache:
            cache[int(k)] = identity_set.identity(int(k))
        identity = cache[int(k)]
        view = view_of(identity_set, int(k), int(j), pose)
        image, meta = render(identity, view, d, size)
        images[row] = np.asarray(image.convert("RGB"))
        identities.append(identity)
        views.append(view)
        metas.append(meta)
    return WorldBatch(images, np.asarray(identity_indices, np.int64), np.asarray(view_indices, np.int64),
                      domain_list, identities, views, metas, identity_set.name)


def grid_indices(n_identities: int, views_per_identity: int, first_identity: int = 0,
                 first_view: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every identity first..first+n-1 in views first_view..first_view+v-1, identity-major."""
    ids = np.repeat(np.arange(first_identity, first_identity + n_identities), views_per_identity)
    views = np.tile(np.arange(first_view, first_view + views_per_identity), n_identities)
    return ids, views


def render_identities(identity_set: IdentitySet, n_identities: int, views_per_identity: int, domain: str,
                      size: int, pose: str = "aligned", first_identity: int = 0, first_view: int = 0) -> WorldBatch:
    """A (n_identities x views_per_identity) block of one domain: the usual training / validation set."""
    ids, views = grid_indices(n_identities, views_per_identity, first_identity, first_view)
    return render_batch(identity_set, ids, views, domain, size, pose)


def render_mixed_domains(identity_set: IdentitySet, n_identities: int, views_per_identity: int, size: int,
                         seed: int, domains: Sequence[str] = DOMAINS, pose: str = "aligned",
                         first_identity: int = 0) -> WorldBatch:
    """Every identity in `views_per_identity` views, each view in a domain drawn (seeded) from `domains`."""
    ids, views = grid_indices(n_identities, views_per_identity, first_identity)
    rng = np.random.default_rng([seed, 15, first_identity])
    chosen = [domains[i] for i in rng.integers(len(domains), size=len(ids))]
    return render_batch(identity_set, ids, views, chosen, size, pose)


def render_domain_per_identity(identity_set: IdentitySet, n_identities: int, views_per_identity: int, size: int,
                               domains: Sequence[str] = DOMAINS, pose: str = "aligned",
                               first_identity: int = 0) -> WorldBatch:
    """Identity k in `views_per_identity` views, all in domain domains[k % len(domains)] (same-domain pairs of one
    person in several views, for metric learning)."""
    ids, views = grid_indices(n_identities, views_per_identity, first_identity)
    return render_batch(identity_set, ids, views, [domains[k % len(domains)] for k in ids], size, pose)


def _render_latents(args: tuple) -> np.ndarray:
    latents, size = args
    return np.stack([np.asarray(render(*params_from_normal(u), "photo", size)[0].convert("RGB")) for u in latents])


def render_latent_pool(count: int, size: int, seed: int, workers: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` world photos drawn through the world's Gaussian latent (fstrain.data.synthetic.params_from_normal):
    (u (count, LATENT_DRAWS) float32, photos (count, 3, size, size) in [-1, 1]).

    The people are fresh draws of the world's distribution: with continuous parameters none of them is one of the
    EVAL or HELDOUT identities. Same result for a seed on every machine and for any `workers`.
    """
    latents = np.random.default_rng([seed, 57]).standard_normal((count, LATENT_DRAWS)).astype(np.float32)
    if workers <= 1 or count < 64:
        images = _render_latents((latents, size))
    else:
        import multiprocessing
        bounds = np.linspace(0, count, workers * 4 + 1).astype(int)    # four chunks a worker: uneven times even out
        jobs = [(latents[a:b], size) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            images = np.concatenate(pool.map(_render_latents, jobs))
    return torch.from_numpy(latents), to_tensor(images)
