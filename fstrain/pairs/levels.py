"""The three levels of pseudo-paired data for a batch of style images S.

- level 1, embedding:    z1+ = E_z+(S); w1+ = base mapping of z1+ layer by layer.
- level 2, optimisation: z2+ = argmin_{z+, from z1+} L_sem(G*(z+), S) with G* the baseline fine-tune;
                         w2+ = base mapping of z2+.
- level 3, refinement:   w3+ = E_w+(S).
Every level's pseudo photo is P = G(w+), rendered by the *base* generator G with its stored noise buffers, one
sample at a time, so P is a deterministic function of the stored w+ (the pair shards can be re-rendered exactly).

Why the base mapping for w1+/w2+: the Z+ codes live in the base G's z space (the encoder was trained for it) and
the pairs are (photo-like P, style S); G* enters only through level 2's objective, with its own mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fstrain.stylize.images import resize_images

# L_sem(candidate renders, style images) -> per-sample loss (N,)
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class OptimisationResult:
    z_plus: torch.Tensor            # (N, n_latent, D) best iterate per sample
    loss_initial: torch.Tensor      # (N,) L_sem at z1+
    loss_final: torch.Tensor        # (N,) L_sem at the returned z_plus
    steps: int


def _check_codes(codes: torch.Tensor, generator: nn.Module, what: str) -> torch.Tensor:
    if codes.ndim != 3 or codes.shape[1] != generator.n_latent or codes.shape[2] != generator.style_dim:
        raise ValueError(f"{what} returned codes of shape {tuple(codes.shape)}; the generator needs "
                         f"(N, {generator.n_latent}, {generator.style_dim}): encoder and generator do not match")
    return codes


@torch.no_grad()
def embed_level1(encoder_zplus: nn.Module, base_generator: nn.Module,
                 style_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Level 1: (z1+, w1+) for style images (N, 3, H, W) in [-1, 1]."""
    z_plus = _check_codes(encoder_zplus(style_images), base_generator, "the Z+ encoder")
    return z_plus, base_generator.get_latent(z_plus)


@torch.no_grad()
def refine_level3(encoder_wplus: nn.Module, base_generator: nn.Module, style_images: torch.Tensor) -> torch.Tensor:
    """Level 3: w3+ = E_w+(S)."""
    return _check_codes(encoder_wplus(style_images), base_generator, "the W+ encoder")


@torch.no_grad()
def render_pseudo_photos(base_generator: nn.Module, w_plus: torch.Tensor) -> torch.Tensor:
    """P = G(w+) with G's stored noise buffers, one sample at a time.

    One at a time because the grouped modulated convolutions round differently for different batch sizes (~5e-6,
    enough to flip a few 8-bit pixels): rendered alone, P is a function of its own w+ only, so
    `G.synthesis(w_plus[None])` reproduces the stored pixels exactly on the same device. The cost is one
    generator pass per sample, small next to level 2's optimisation.
    """
    return torch.cat([base_generator.synthesis(w_plus[i:i + 1], randomize_noise=False)
                      for i in range(w_plus.shape[0])])


def optimise_level2(generator_star: nn.Module, z_init: torch.Tensor, style_images: torch.Tensor,
                    semantic_loss: PerSampleLoss, steps: int, lr: float) -> OptimisationResult:
    """Level 2: Adam on z+ from `z_init` minimising L_sem(G*(z+), S) per sample; returns the best iterate.

    The loss is summed over the batch and Adam is element-wise, so each sample is optimised independently of the
    others in its batch. The best iterate per sample (not just the last) is kept: with a large learning rate the
    last step can overshoot, and the recorded final loss is always the loss of the returned code.
    """
    targets = resize_images(style_images, generator_star.size).to(z_init.device)
    grad_flags = [p.requires_grad for p in generator_star.parameters()]
    generator_star.requires_grad_(False)   # only z+ is optimised
    z_plus = z_init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z_plus], lr=lr)

    best_z = z_init.detach().clone()
    best_loss = torch.full((z_init.shape[0],), float("inf"), device=z_init.device)
    loss_initial = None
    try:
        for step in range(steps + 1):     # steps updates; the extra pass evaluates the last iterate
            rendered = generator_star.synthesis(generator_star.get_latent(z_plus), randomize_noise=False)
            per_sample = semantic_loss(rendered, targets)
            if per_sample.shape != best_loss.shape:
                raise ValueError(f"the semantic loss must return one value per sample (shape {tuple(best_loss.shape)}); "
                                 f"got {tuple(per_sample.shape)}: build it with reduction='none'")
            with torch.no_grad():
                if loss_initial is None:
                    loss_initial = per_sample.detach().clone()
                improved = per_sample.detach() < best_loss
                best_loss = torch.where(improved, per_sample.detach(), best_loss)
                best_z[improved] = z_plus.detach()[improved]
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            per_sample.sum().backward()
            optimizer.step()
    finally:
        for param, flag in zip(generator_star.parameters(), grad_flags):
            param.requires_grad_(flag)
    return OptimisationResult(z_plus=best_z, loss_initial=loss_initial, loss_final=best_loss, steps=steps)
