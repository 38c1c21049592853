"""Loss terms of one style fine-tuning run (paper Eq. 1-3) and StyleGAN2's adversarial losses.

- `generator_adversarial_loss` / `discriminator_adversarial_loss`: non-saturating logistic GAN loss.
- `r1_penalty`: R1 gradient penalty on real images (applied lazily, every `d_reg_every` steps).
- `SemanticLoss` (Eq. 1): L_sem(G(z), G'(z)) = LPIPS + lambda_id * (1 - cos(ID(G(z)), ID(G'(z)))), plus our optional
  eye-band term lambda_eyes * LPIPS(eye band of G(z), eye band of G'(z)) (not in the paper; 0 = the paper's L_sem).
- `PairLoss` (Eq. 2): L_pair = LPIPS(G'(w+), S) on pseudo-pairs.
- `StylizationLoss` (Eq. 3): L = L_adv + lambda_sem * L_sem + lambda_pair * L_pair, by phase as NVlabs'
  StyleGAN2Loss does it (G main, D main, D reg), each phase returning its named terms; the mode decides which
  terms take part (no semantic / pair loss object = that term is off).

Images are NCHW in [-1, 1]. Perceptual nets are passed in as callables so this module does not care how they
were loaded (`fstrain.models.perceptual.load_lpips`, `fstrain.models.identity.load_identity`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ImageMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (a, b) -> per-sample distance
ImageEmbedder = Callable[[torch.Tensor], torch.Tensor]              # images -> (N, D) embeddings


# ---------------------------------------------------------------- pixel weights


def eye_band_box(size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the eye/brow band of a `size` px FFHQ-aligned face:
    where eyes, brows and glasses sit. The template frame is 512 units (fstrain.data.align)."""
    unit = size / 512.0
    return int(190 * unit), int(280 * unit) + 1, int(140 * unit), int(372 * unit) + 1


def face_weight_map(size: int, feature_weight: float) -> torch.Tensor | None:
    """(1, 1, size, size) pixel weights for FFHQ-aligned faces: `feature_weight` on the eye/brow band (glasses sit
    there too) and the mouth, 1 elsewhere; None for weight 1. Why: at 64 px an eye is a few pixels, so an
    unweighted L1 reaches its floor with the eyes blurred away."""
    if feature_weight == 1.0:
        return None
    weight = torch.ones(1, 1, size, size)
    top, bottom, left, right = eye_band_box(size)
    weight[..., top:bottom, left:right] = feature_weight
    unit = size / 512.0
    weight[..., int(345 * unit):int(395 * unit) + 1, int(190 * unit):int(322 * unit) + 1] = feature_weight
    return weight


def eye_band(images: torch.Tensor, min_height: int = 64) -> torch.Tensor:
    """The eye/brow band of FFHQ-aligned faces (NCHW), enlarged (aspect kept) to at least `min_height` rows. Why: at
    64 px a glasses frame is a 1-2 px line that a perceptual net's strided stem averages away in the whole face;
    enlarged, it is an edge the trunk sees."""
    top, bottom, left, right = eye_band_box(images.shape[-1])
    band = images[..., top:bottom, left:right]
    height, width = band.shape[-2:]
    if height >= min_height:
        return band
    scale = min_height / height
    return F.interpolate(band, size=(min_height, round(width * scale)), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- adversarial


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss for G: mean softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def discriminator_adversarial_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic loss for D: mean softplus(-D(x)) + mean softplus(D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: mean over the batch of |d D(x) / d x|^2. `real_images` must have requires_grad=True.

    create_graph=True so the penalty itself can be back-propagated into D's weights (second-order gradient).
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def lazy_regularization_ratio(reg_every: int) -> float:
    """Adam hyper-parameter scaling for lazy regularisation (StyleGAN2 appendix B): reg_every / (reg_every + 1)."""
    return reg_every / (reg_every + 1) if reg_every > 0 else 1.0


# ---------------------------------------------------------------- perceptual terms


def resize_for_metric(images: torch.Tensor, min_size: int = 64, max_size: int = 256) -> torch.Tensor:
    """Bring images into the size range perceptual nets are meant for.

    Large renders are average-pooled down (LPIPS at 1024 px costs 16x the compute for no better signal, and
    the literature pools to 256); tiny test renders are upsampled because AlexNet's strided stem collapses
    anything under ~32 px to nothing.
    """
    size = images.shape[-1]
    if size > max_size:
        return F.adaptive_avg_pool2d(images, (max_size, max_size))
    if size < min_size:
        return F.interpolate(images, size=(min_size, min_size), mode="bilinear", align_corners=False)
    return images


def resize_like(images: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`images` at `like`'s height and width (antialiased bilinear), unchanged when they already match."""
    if images.shape[-2:] == like.shape[-2:]:
        return images
    return F.interpolate(images, size=like.shape[-2:], mode="bilinear", align_corners=False, antialias=True)


def perceptual_distance(lpips: ImageMetric, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample LPIPS distance (N,) after `resize_for_metric`; `b` is resized to `a`'s size first."""
    b = resize_like(b, a)
    d = lpips(resize_for_metric(a), resize_for_metric(b))
    return d.reshape(a.shape[0], -1).mean(1)


def identity_distance(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Per-sample 1 - cosine similarity of identity embeddings (N,)."""
    return 1 - F.cosine_similarity(emb_a.flatten(1), emb_b.flatten(1), dim=1)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")


class SemanticTerms(NamedTuple):
    total: torch.Tensor
    perceptual: torch.Tensor
    identity: torch.Tensor
    eyes: torch.Tensor


class SemanticLoss(nn.Module):
    """Eq. 1: keep a stylised render semantically close to the base render of the same latent.

    L_sem(x, y) = LPIPS(x, y) + lambda_id * (1 - cos(ID(x), ID(y))) + lambda_eyes * LPIPS(eye_band(x), eye_band(y)).
    The identity term is skipped (reported as 0) when no identity net is given or lambda_id == 0, the eye-band term
    (ours, not the paper's: the fine-tunes drop glasses, docs/study/attribute_keep.md) when lambda_eyes == 0.
    Gradients flow into both inputs; in training the base render G(z) is computed under no_grad, in pseudo-pair
    optimisation the reference is fixed.
    """

    def __init__(self, lpips: ImageMetric, identity: ImageEmbedder | None = None, lambda_id: float = 0.1,
                 reduction: str = "mean", lambda_eyes: float = 0.0):
        super().__init__()
        self.lpips = lpips
        self.identity = identity
        self.lambda_id = float(lambda_id)
        self.lambda_eyes = float(lambda_eyes)
        self.reduction = reduction

    def terms(self, reference: torch.Tensor, candidate: torch.Tensor) -> SemanticTerms:
        perceptual = perceptual_distance(self.lpips, reference, candidate)
        if self.identity is not None and self.lambda_id != 0:
            ident = identity_distance(self.identity(reference), self.identity(candidate))
        else:
            ident = torch.zeros_like(perceptual)
        if self.lambda_eyes != 0:
            eyes = self.lpips(eye_band(reference), eye_band(resize_like(candidate, reference)))
            eyes = eyes.reshape(reference.shape[0], -1).mean(1)
        else:
            eyes = torch.zeros_like(perceptual)
        total = perceptual + self.lambda_id * ident + self.lambda_eyes * eyes
        return SemanticTerms(*(_reduce(t, self.reduction) for t in (total, perceptual, ident, eyes)))

    def forward(self, reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.terms(reference, candidate).total


class PairLoss(nn.Module):
    """Eq. 2: L_pair = LPIPS(G'(w+), S), the stylised render of a pseudo-pair's code against its style image."""

    def __init__(self, lpips: ImageMetric, reduction: str = "mean"):
        super().__init__()
        self.lpips = lpips
        self.reduction = reduction

    def forward(self, rendered: torch.Tensor, style_images: torch.Tensor) -> torch.Tensor:
        return _reduce(perceptual_distance(self.lpips, rendered, style_images), self.reduction)


class StylizationLoss:
    """Eq. 3 of one fine-tune, phase by phase; every phase returns its named terms (floats for logs come from
    the caller). `semantic`/`pair` are None when the mode leaves that term out (baseline: both None)."""

    def __init__(self, semantic: SemanticLoss | None = None, pair: PairLoss | None = None, *,
                 lambda_sem: float = 1.0, lambda_pair: float = 1.0, r1_gamma: float = 10.0, r1_every: int = 16):
        self.semantic = semantic
        self.pair = pair
        self.lambda_sem = float(lambda_sem)
        self.lambda_pair = float(lambda_pair)
        self.r1_gamma = float(r1_gamma)
        self.r1_every = int(r1_every)

    def d_main(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """D's logistic loss; `d_adv` is also the term to back-propagate."""
        return {"d_adv": discriminator_adversarial_loss(real_logits, fake_logits)}

    def d_reg(self, real_logits: torch.Tensor, real_images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Lazy R1: `r1` (the penalty, for logs) and `d_reg` = r1_gamma / 2 * r1 * r1_every (to back-propagate)."""
        r1 = r1_penalty(real_logits, real_images)
        return {"r1": r1, "d_reg": self.r1_gamma / 2 * r1 * self.r1_every}

    def g_main(self, fake_logits: torch.Tensor, *, reference: torch.Tensor | None = None,
               fake: torch.Tensor | None = None, rendered: torch.Tensor | None = None,
               style_images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Eq. 3 for G': `g_adv`, with L_sem `sem` (`sem_lpips`, `sem_id`, `sem_eyes`) of (G(z) `reference`, G'(z)
        `fake`) and L_pair `pair` of (G'(w+) `rendered`, S `style_images`) when on, and their weighted sum `g_total`."""
        g_adv = generator_adversarial_loss(fake_logits)
        terms = {"g_adv": g_adv}
        total = g_adv
        if self.semantic is not None:
            if reference is None or fake is None:
                raise ValueError("the semantic term needs the base render `reference` and the styled render `fake`")
            sem = self.semantic.terms(reference, fake)
            total = total + self.lambda_sem * sem.total
            terms.update(sem=sem.total, sem_lpips=sem.perceptual, sem_id=sem.identity, sem_eyes=sem.eyes)
        if self.pair is not None:
            if rendered is None or style_images is None:
                raise ValueError("the pair term needs the pseudo-pair render `rendered` and its `style_images`")
            pair = self.pair(rendered, style_images)
            total = total + self.lambda_pair * pair
            terms["pair"] = pair
        terms["g_total"] = total
        return terms
