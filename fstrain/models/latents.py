"""Latent-space helpers: the V basis (UI2I's "V space"), v <-> w, truncation, style mixing, z_plus -> w_plus.

Names: z (N, D) -> mapping -> w (N, D); w_plus / z_plus (N, n_latent, D); v (N, D) with w = v @ V.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


def modulation_weight_matrix(generator_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All modulation weights stacked along rows: (sum of in_channels, style_dim).

    The selection is SeFa's / UI2I's closed-form factorization key filter: every `*modulation*weight` whose
    key does not contain "to_rgbs" (so conv1, to_rgb1 and every convs.i are in), in state-dict order.
    """
    state = generator_or_state_dict.state_dict() if isinstance(generator_or_state_dict, nn.Module) \
        else generator_or_state_dict
    weights = [v for k, v in state.items() if "modulation" in k and "weight" in k and "to_rgbs" not in k]
    if not weights:
        raise ValueError("no modulation weights found: expected rosinality keys like 'conv1.conv.modulation.weight'")
    return torch.cat([w.detach().to("cpu", torch.float64) for w in weights], 0)


def modulation_basis(generator_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """V (style_dim, style_dim): right-singular vectors of the concatenated modulation weights.

    Same matrix as UI2I's `eigvec = torch.svd(W).V` (singular vectors in the columns, so SeFa's i-th direction
    is V[:, i]); codes use UI2I's convention w = v @ V. V is orthogonal, so v = w @ V.T.
    Computed in float64 on CPU; returned as float32.
    """
    matrix = modulation_weight_matrix(generator_or_state_dict)
    # full_matrices: V stays square (style_dim x style_dim) even for tiny models with fewer rows than style_dim.
    _, _, vh = torch.linalg.svd(matrix, full_matrices=True)
    return vh.mT.contiguous().to(torch.float32)


def v_to_w(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w = v @ V for v of shape (..., style_dim)."""
    return v @ basis.to(v.dtype)


def w_to_v(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """v = w @ V.T (the inverse of `v_to_w`, since V is orthogonal)."""
    return w @ basis.to(w.dtype).mT


def truncate(w: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """Move w (or w_plus) toward the average latent: w_avg + psi * (w - w_avg). psi=0 gives w_avg."""
    return w_avg + psi * (w - w_avg)


def broadcast_w(w: torch.Tensor, n_latent: int) -> torch.Tensor:
    """(N, D) -> (N, n_latent, D); a 3-D w_plus passes through after a layer-count check."""
    if w.ndim == 2:
        return w.unsqueeze(1).repeat(1, n_latent, 1)
    if w.ndim == 3 and w.shape[1] == n_latent:
        return w
    raise ValueError(f"expected w (N, D) or w_plus (N, {n_latent}, D); got shape {tuple(w.shape)}")


def mix_layers(content_w_plus: torch.Tensor, other_w_plus: torch.Tensor, k: int) -> torch.Tensor:
    """Layers < k from the content code, layers >= k from the other code (both (N, n_latent, D))."""
    if content_w_plus.ndim != 3 or content_w_plus.shape[1:] != other_w_plus.shape[1:]:
        raise ValueError(f"mix_layers needs two w_plus codes of the same (n_latent, D); got "
                         f"{tuple(content_w_plus.shape)} and {tuple(other_w_plus.shape)}")
    n_latent = content_w_plus.shape[1]
    if not 0 <= k <= n_latent:
        raise ValueError(f"mixing layer k={k} is outside 0..{n_latent}")
    other = other_w_plus.expand(content_w_plus.shape[0], -1, -1) if other_w_plus.shape[0] == 1 else other_w_plus
    return torch.cat([content_w_plus[:, :k], other[:, k:]], 1)


def z_plus_to_w_plus(generator: nn.Module, z_plus: torch.Tensor) -> torch.Tensor:
    """Map each layer's z through the mapping network separately: (N, n_latent, D) -> (N, n_latent, D)."""
    if z_plus.ndim != 3:
        raise ValueError(f"z_plus must be (N, n_latent, D); got shape {tuple(z_plus.shape)}")
    return generator.get_latent(z_plus)
