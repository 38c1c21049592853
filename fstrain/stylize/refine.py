"""Hybrid inversion: refine each face's encoder code E_w+(x) by optimisation against the base G.

A feed-forward W+ encoder averages away what is rare in its training faces (glasses, curls): G(E_w+(x)) is the
nearest *typical* face. A few hundred Adam steps on w+, started at E_w+(x) and pulled back toward it, bring those
details back while the code stays in the region of W+ the encoder maps to (so G' still stylizes it):

    min_w  weighted L1(G(w), x) + lpips_weight * LPIPS(G(w), x) + anchor_weight * mean((w - E_w+(x))^2)

G is the *base* generator (the photo domain: the fine-tuned G' share its W+), rendered with its stored noise.
The L1 weights the eye/brow band and mouth of the aligned face (`fstrain.losses.face_weight_map`) because at low
resolution an eye or a glasses rim is a few pixels that a plain L1 hardly notices. Each face's loss is its own
(summed over the batch, never averaged), so a face gets the same code whichever batch it is in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fstrain.losses import ImageMetric, face_weight_map, perceptual_distance

FEATURE_WEIGHT = 3.0     # L1 weight of the eye/brow band and mouth, as the world's generator pretraining uses


@dataclass(frozen=True)
class RefineSettings:
    """The optimisation's knobs (the config's stylize.refine_* keys)."""
    steps: int = 200
    lr: float = 0.01
    lpips_weight: float = 0.5
    anchor_weight: float = 0.1

    def describe(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "lpips_weight": self.lpips_weight,
                "anchor_weight": self.anchor_weight}


def check_faces_fit(base_generator: nn.Module, images: torch.Tensor, what: str) -> None:
    """Faces compared with the base G's renders must be at its size (they were aligned for the style G')."""
    size = base_generator.size
    if images.shape[-1] != size or images.shape[-2] != size:
        raise ValueError(f"{what} renders the base G at {size} px; faces are {tuple(images.shape[-2:])}: "
                         f"the base generator and the style generators must share one resolution")


class CodeRefiner:
    """`refiner(images, w_init)` -> refined w+ (same shape), images aligned faces in [-1, 1] at G's size.
    The base generator is frozen in place (requires_grad False, eval): only the codes receive gradients."""

    def __init__(self, base_generator: nn.Module, lpips: ImageMetric, settings: RefineSettings):
        if settings.steps < 1:
            raise ValueError(f"refinement needs at least one step; got steps={settings.steps} (0 = do not refine: "
                             f"leave the refiner out)")
        self.generator = base_generator.eval().requires_grad_(False)
        self.lpips = lpips
        self.settings = settings
        # faces must be at G's size (checked per call), so the eye-band weights are built once, not per step
        self.pixel_weight = face_weight_map(base_generator.size, FEATURE_WEIGHT)

    def _device(self) -> torch.device:
        return self.generator.input.input.device

    def per_face_loss(self, w_plus: torch.Tensor, images: torch.Tensor, w_anchor: torch.Tensor) -> torch.Tensor:
        """(N,) objective of each face's code."""
        s = self.settings
        rendered = self.generator.synthesis(w_plus, randomize_noise=False)
        pixel = (rendered - images).abs()
        if self.pixel_weight is not None:
            pixel = pixel * self.pixel_weight.to(pixel)
        loss = pixel.flatten(1).mean(1) + s.anchor_weight * (w_plus - w_anchor).pow(2).flatten(1).mean(1)
        if s.lpips_weight:
            loss = loss + s.lpips_weight * perceptual_distance(self.lpips, rendered, images)
        return loss

    def __call__(self, images: torch.Tensor, w_init: torch.Tensor) -> torch.Tensor:
        check_faces_fit(self.generator, images, "refinement")
        device = self._device()
        images = images.to(device).float()
        w_anchor = w_init.detach().to(device).float()
        w_plus = w_anchor.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([w_plus], lr=self.settings.lr)
        with torch.enable_grad():
            for _ in range(self.settings.steps):
                loss = self.per_face_loss(w_plus, images, w_anchor).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        return w_plus.detach().to(w_init.dtype)


def encode_in_batches(encoder: nn.Module, images: torch.Tensor, batch_size: int,
                      refiner: CodeRefiner | None = None) -> torch.Tensor:
    """E_w+(images) batch by batch on the encoder's device, each batch refined by `refiner` when there is one."""
    device = next(encoder.parameters()).device
    codes = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start:start + batch_size].to(device)
        with torch.no_grad():
            w_plus = encoder(batch)
        codes.append(refiner(batch, w_plus) if refiner is not None else w_plus)
    return torch.cat(codes)


def settings_from_config(stylize_config, steps: int | None = None) -> RefineSettings:
    """The `stylize.refine_*` keys of a pipeline config (fstrain.settings.StylizeConfig); `steps` (a command
    line's --refine-steps) overrides refine_steps when given."""
    return RefineSettings(steps=stylize_config.refine_steps if steps is None else steps, lr=stylize_config.refine_lr,
                          lpips_weight=stylize_config.refine_lpips_weight,
                          anchor_weight=stylize_config.refine_anchor_weight)


def refiner_from_config(config, root: str, device: str | torch.device = "cpu",
                        steps: int | None = None) -> CodeRefiner | None:
    """The refiner a pipeline config asks for (stylize.refine_*, `steps` overriding refine_steps), with the config's
    base G and perceptual net (`base_models_from_config`); None when it asks for no refinement."""
    settings = settings_from_config(config.stylize, steps)
    if not settings.steps:
        return None
    return CodeRefiner(*base_models_from_config(config, root, device), settings)


def base_models_from_config(config, root: str, device: str | torch.device = "cpu") -> tuple[nn.Module, ImageMetric]:
    """(base G, perceptual net): models.base_generator (models.base_generator_which, default g_ema) and
    models.lpips_backbone of a pipeline config through the model hub (fetched once, verified against the config's
    sha256 pins), as refinement and pivotal tuning render and measure with them."""
    from fstrain.models.hub import ModelHub

    hub = ModelHub(config.models, root)
    return hub.generator(load_discriminator=False).generator.to(device), hub.lpips(device)


def load_base_models(*, base_generator_uri: str, lpips_uri: str, lpips_net: str = "vgg",
                     base_generator_sha256: str | None = None, base_generator_which: str = "g_ema",
                     lpips_sha256: str | None = None,
                     device: str | torch.device = "cpu") -> tuple[nn.Module, ImageMetric]:
    """(base G (`base_generator_which` of the file), perceptual net) read through the model hub's loaders, on
    `device`."""
    from fstrain.models.hub import generator_at, lpips_at

    generator = generator_at(base_generator_uri, base_generator_sha256, which=base_generator_which,
                             load_discriminator=False).generator
    return generator.to(device), lpips_at(lpips_uri, lpips_net, lpips_sha256, device)
