"""The three stylization modes on batches of aligned faces: general, multimodal, reference-guided.

All three start from the content code w+ = E_w+(x) of the input photo (encode once, render every style), refined
by optimisation against the base G when the Stylizer has a `CodeRefiner` (fstrain.stylize.refine), and rendered by
G' + the face's own weight change when it has a `PivotalTuner` (fstrain.stylize.pivotal; `pivots(...)`):
- general:         y = G'(w+)
- multimodal:      layers >= k of w+ replaced by random z+ mapped layer by layer and truncated toward
                   G''s mean w with psi; `n` samples per face.
- reference-guided: layers >= k of w+ replaced by a reference image's code w (inverted in V space, see
                   `fstrain.stylize.reference`), repeated over those layers.

Rendering uses each generator's stored noise buffers (`randomize_noise=False`), so the same code always gives
the same image, whatever the batch. Everything is batch-first and runs on whatever device the modules are on.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from fstrain.models.checkpoints import MEAN_LATENT_SAMPLES
from fstrain.models.latents import broadcast_w, mix_layers, truncate
from fstrain.stylize.pivotal import Delta, DeltaRenderer, PivotalTuner
from fstrain.stylize.refine import CodeRefiner


class Stylizer:
    """Stylize aligned faces with one W+ encoder and one fine-tuned generator G' per style.

    `latent_avgs[style]` is G''s mean w (the checkpoint's `latent_avg`); when missing it is estimated once from
    `MEAN_LATENT_SAMPLES` mapped z with a fixed seed, so results stay reproducible. With a `refiner`, `encode`
    returns the encoder's codes refined against the base G (hybrid inversion). With a `tuner`, `pivots(images, w+)`
    gives each face's weight change and every mode renders a face by G' + its change when given `pivots`.
    """

    def __init__(self, encoder_wplus: nn.Module, generators: Mapping[str, nn.Module],
                 latent_avgs: Mapping[str, torch.Tensor] | None = None, refiner: CodeRefiner | None = None,
                 tuner: PivotalTuner | None = None):
        if not generators:
            raise ValueError("Stylizer needs at least one style generator")
        n_latents = {style: g.n_latent for style, g in generators.items()}
        if len(set(n_latents.values())) != 1:
            raise ValueError(f"all style generators must share n_latent (one content code for all); got {n_latents}")
        self.encoder = encoder_wplus.eval()
        self.generators = {style: g.eval() for style, g in generators.items()}
        self.n_latent = next(iter(n_latents.values()))
        self.refiner = refiner
        self.tuner = tuner
        for name, base in (("refinement", refiner), ("pivotal tuning", tuner)):
            if base is not None and base.generator.n_latent != self.n_latent:
                raise ValueError(f"the base generator used for {name} has n_latent {base.generator.n_latent}; "
                                 f"the style generators have {self.n_latent}: they must come from the same base G")
        self._delta_renderers: dict[str, DeltaRenderer] = {}
        self._latent_avgs: dict[str, torch.Tensor] = {}
        for style, avg in (latent_avgs or {}).items():
            self._latent_avgs[style] = avg.detach().reshape(1, -1)

    # -- lookups
    @property
    def styles(self) -> list[str]:
        return list(self.generators)

    def generator(self, style: str) -> nn.Module:
        try:
            return self.generators[style]
        except KeyError:
            raise KeyError(f"no generator loaded for style {style!r}; loaded styles: {self.styles}") from None

    def latent_avg(self, style: str) -> torch.Tensor:
        """G''s mean w as (1, style_dim) on the generator's device."""
        g = self.generator(style)
        device = g.input.input.device
        if style not in self._latent_avgs:
            rng = torch.Generator(device="cpu").manual_seed(0)
            self._latent_avgs[style] = g.mean_latent(MEAN_LATENT_SAMPLES, generator=rng)
        return self._latent_avgs[style].to(device)

    # -- modes
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Aligned faces (N, 3, H, W) in [-1, 1] -> content codes w+ (N, n_latent, style_dim)."""
        with torch.no_grad():
            w_plus = self.encoder(images)
        if w_plus.ndim != 3 or w_plus.shape[1] != self.n_latent:
            raise ValueError(f"encoder returned codes of shape {tuple(w_plus.shape)}; the style generators need "
                             f"(N, {self.n_latent}, style_dim): encoder and generators do not belong together")
        if self.refiner is not None:
            w_plus = self.refiner(images, w_plus)
        return w_plus

    def pivots(self, images: torch.Tensor, w_plus: torch.Tensor) -> list[Delta] | None:
        """Each face's pivotal weight change around its code (None without a tuner: render by G' as it is)."""
        return None if self.tuner is None else self.tuner(images, w_plus)

    @torch.no_grad()
    def render(self, w_plus: torch.Tensor, style: str, pivots: list[Delta] | None = None) -> torch.Tensor:
        """G'(w+) with G''s stored noise: (N, n_latent, D) -> (N, 3, H, W); with `pivots`, face i by G' + pivots[i]."""
        g = self.generator(style)
        if pivots is not None:
            if style not in self._delta_renderers:
                self._delta_renderers[style] = DeltaRenderer(g)
            return self._delta_renderers[style].render(w_plus, pivots)
        return g.synthesis(w_plus.to(g.input.input.device), randomize_noise=False)

    def general(self, w_plus: torch.Tensor, style: str, pivots: list[Delta] | None = None) -> torch.Tensor:
        """General stylization: y = G'(w+)."""
        return self.render(w_plus, style, pivots)

    @torch.no_grad()
    def multimodal_codes(self, w_plus: torch.Tensor, style: str, k: int, psi: float, n: int,
                         seed: int) -> torch.Tensor:
        """Mixed codes (N, n, n_latent, D): layers >= k of each face's w+ from `n` random truncated z+ codes.

        The `n` random codes depend only on (seed, style's generator), not on the batch: sample i of every face
        uses the same style code, and a face gets the same samples whichever batch it is in.
        """
        g = self.generator(style)
        device = g.input.input.device
        rng = torch.Generator(device="cpu").manual_seed(seed)
        z_plus = torch.randn(n, self.n_latent, g.style_dim, generator=rng).to(device)
        random_w_plus = truncate(g.get_latent(z_plus), self.latent_avg(style).unsqueeze(1), psi)   # (n, L, D)
        w_plus = w_plus.to(device)
        mixed = [mix_layers(w_plus, random_w_plus[i:i + 1], k) for i in range(n)]
        return torch.stack(mixed, 1)

    @torch.no_grad()
    def multimodal(self, w_plus: torch.Tensor, style: str, k: int, psi: float, n: int, seed: int,
                   pivots: list[Delta] | None = None) -> torch.Tensor:
        """Multimodal stylization: (N, n, 3, H, W), `n` samples per face differing only in layers >= k."""
        return self.render_samples(self.multimodal_codes(w_plus, style, k, psi, n, seed), style, pivots)

    @torch.no_grad()
    def render_samples(self, codes: torch.Tensor, style: str, pivots: list[Delta] | None = None) -> torch.Tensor:
        """Codes (N, n, n_latent, D), n per face -> (N, n, 3, H, W); with `pivots`, face i's by G' + pivots[i]."""
        faces, n = codes.shape[:2]
        if pivots is not None:
            # Face-major, each face's delta repeated for its samples back to back: the renderer loads a face's
            # weights once, not once per sample, and renders one image at a time as `general` does with pivots.
            repeated = [delta for delta in pivots for _ in range(n)]
            return self.render(codes.flatten(0, 1), style, repeated).unflatten(0, (faces, n))
        # One render per sample index over the face batch: the same batching as `general`, so k = n_latent
        # gives exactly the general images (grouped convs round differently for other batch sizes).
        return torch.stack([self.render(codes[:, i], style) for i in range(n)], 1)

    @torch.no_grad()
    def reference_codes(self, w_plus: torch.Tensor, reference_w: torch.Tensor, k: int) -> torch.Tensor:
        """Layers >= k of w+ replaced by the reference's w (D,) or (1, D), repeated into W+."""
        reference_w = reference_w.reshape(1, -1).to(w_plus.device, w_plus.dtype)
        return mix_layers(w_plus, broadcast_w(reference_w, self.n_latent), k)

    def reference(self, w_plus: torch.Tensor, style: str, reference_code, k: int,
                  pivots: list[Delta] | None = None) -> torch.Tensor:
        """Reference-guided stylization with a `ReferenceCode` (or a plain w tensor) inverted for this style's G'."""
        reference_w = getattr(reference_code, "w", reference_code)
        return self.render(self.reference_codes(w_plus.to(self.generator(style).input.input.device),
                                                reference_w, k), style, pivots)
