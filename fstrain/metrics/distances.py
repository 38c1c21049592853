"""The paper's two distances: perceptual distance of a stylization, and semantic distance between G and G'.

Perceptual distance (input -> output), per face x from a set of aligned photos:
    d_perc(x) = LPIPS(x, G'(E_w+(x)))
i.e. how far the general-mode stylization y = G'(w+) moved the photo; reported as the mean over the set.

Semantic distance between the base generator G and a fine-tuned G' (UI2I-style: how much of G's content a
fine-tuned model keeps when both render the *same* latent), over N fixed codes z_1..z_N drawn from
N(0, I) with seed `seed`, each rendered by both generators with the *same* per-sample noise maps (also drawn
from the seed) and no truncation:
    d_sem(G, G') = 1/N sum_i [ LPIPS(G(z_i), G'(z_i)) + lambda_id * (1 - cos(ID(G(z_i)), ID(G'(z_i)))) ]
It is 0 exactly when G' renders the same images as G, and it is the quantity L_sem (Eq. 1) penalises during
training, measured on held-out codes. lambda_id = 0 (or no identity net) leaves the LPIPS term alone. Both
components are reported separately as well.

LPIPS is computed with `fstrain.losses.perceptual_distance` (same resizing as the training losses: renders
above 256 px are pooled to 256, tiny ones upsampled to 64), so metric and loss agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from fstrain.losses import identity_distance, perceptual_distance

ImageMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ImageEmbedder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SemanticDistance:
    total: float          # mean LPIPS + lambda_id * mean (1 - cos ID)
    lpips: float          # mean LPIPS(G(z), G'(z))
    identity: float       # mean (1 - cos(ID(G(z)), ID(G'(z)))); 0.0 when not computed
    lambda_id: float
    num_samples: int


class RunningMean:
    """Mean of per-sample values arriving in batches (float64)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().reshape(-1).double().cpu()
        self.total += float(values.sum())
        self.count += values.numel()

    @property
    def mean(self) -> float:
        if self.count == 0:
            raise ValueError("no values to average")
        return self.total / self.count


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def fixed_latents(num_samples: int, style_dim: int, seed: int) -> torch.Tensor:
    """The evaluation's z codes: (N, style_dim) from a CPU generator seeded with `seed`."""
    return torch.randn(num_samples, style_dim, generator=torch.Generator().manual_seed(seed))


def fixed_noise(g: nn.Module, start: int, count: int, seed: int) -> list[torch.Tensor]:
    """Per-sample noise maps for samples start..start+count-1, independent of how samples are batched."""
    maps: list[list[torch.Tensor]] = [[] for _ in range(g.num_layers)]
    for index in range(start, start + count):
        rng = torch.Generator().manual_seed(seed * 1_000_003 + index)
        for layer, noise in enumerate(g.noise_from(rng, 1, "cpu")):
            maps[layer].append(noise)
    return [torch.cat(m).to(_device_of(g)) for m in maps]


@torch.no_grad()
def render_fixed(g: nn.Module, z: torch.Tensor, start: int, seed: int) -> torch.Tensor:
    """G(z) for the batch of fixed codes starting at index `start`, with that batch's fixed noise."""
    image, _ = g([z.to(_device_of(g))], noise=fixed_noise(g, start, z.shape[0], seed), randomize_noise=False)
    return image


@torch.no_grad()
def semantic_distance(g_base: nn.Module, g_styled: nn.Module, lpips: ImageMetric,
                      identity: ImageEmbedder | None = None, *, lambda_id: float = 0.1, num_samples: int = 64,
                      seed: int = 0, batch_size: int = 8) -> SemanticDistance:
    """d_sem(G, G') as defined in the module docstring."""
    if g_base.style_dim != g_styled.style_dim or g_base.n_latent != g_styled.n_latent:
        raise ValueError(f"G and G' must share the latent layout; got style_dim {g_base.style_dim} vs "
                         f"{g_styled.style_dim}, n_latent {g_base.n_latent} vs {g_styled.n_latent}")
    if num_samples < 1:
        raise ValueError(f"semantic distance needs at least one sample; got num_samples={num_samples}")
    use_identity = identity is not None and lambda_id != 0
    z_all = fixed_latents(num_samples, g_base.style_dim, seed)
    lpips_mean, id_mean = RunningMean(), RunningMean()
    for start in range(0, num_samples, batch_size):
        z = z_all[start:start + batch_size]
        a = render_fixed(g_base, z, start, seed)
        b = render_fixed(g_styled, z, start, seed).to(a.device)
        lpips_mean.add(perceptual_distance(lpips, a, b))
        if use_identity:
            id_mean.add(identity_distance(identity(a), identity(b)))
    identity_term = id_mean.mean if use_identity else 0.0
    return SemanticDistance(total=lpips_mean.mean + (lambda_id * identity_term if use_identity else 0.0),
                            lpips=lpips_mean.mean, identity=identity_term,
                            lambda_id=float(lambda_id) if use_identity else 0.0, num_samples=num_samples)


@torch.no_grad()
def stylization_distance(photos: Iterable[torch.Tensor], stylize: Callable[[torch.Tensor], torch.Tensor],
                         lpips: ImageMetric) -> tuple[float, int]:
    """Mean LPIPS(x, stylize(x)) over batches of aligned photos in [-1, 1]; returns (mean, number of photos).

    `stylize` is e.g. `lambda x: stylizer.general(stylizer.encode(x), style)` (fstrain.stylize's general mode).
    """
    mean = RunningMean()
    for batch in photos:
        output = stylize(batch)
        mean.add(perceptual_distance(lpips, batch.to(output.device), output))
    return mean.mean, mean.count
