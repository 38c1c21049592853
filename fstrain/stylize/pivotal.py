"""Pivotal tuning: what a face's code cannot say, a small per-face change of the generator's weights can.

A W+ code (even refined, fstrain.stylize.refine) only reaches faces the base G can draw; a rare detail (a bun, curls,
glasses rims at 64 px) outside that range is lost before any style sees it. Pivotal tuning (Roich et al., PTI)
fine-tunes a copy of the base G's synthesis weights on one photo with the code w held fixed (the pivot), until
G_tuned(w) draws the photo. The change `delta = G_tuned - G` is then added to each style's G' and the face rendered
by G' + delta at w, as HyperStyle carries its per-image weight offsets over to fine-tuned generators: G' began as a
copy of G, so the same change of the same weights draws the same detail, in the style.

    min_theta  weighted L1(G_theta(w), x) + LPIPS(G_theta(w), x)      (CodeRefiner's per-face loss, w fixed)

Only synthesis weights move (the mapping network is irrelevant to a fixed w); the stored noise maps stay, so the
detail must live in the weights G' shares. Measured on validation identities (docs/study/pivotal_probe/): 500
steps at lr 0.006 carry part of the glasses and hair style into the styles (the reader's errors drop in all five),
1000 steps a little more (lowest GT attribute error of 500 / 1000 / 2000; more of the glasses rims' structure,
docs/study/glasses_rim_probe/); twice the delta breaks faces.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from fstrain.losses import ImageMetric
from fstrain.stylize.refine import CodeRefiner, RefineSettings, base_models_from_config, check_faces_fit

MAPPING_PREFIX = "style."      # rosinality's mapping network: not tuned, never part of a delta

Delta = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PivotalSettings:
    """The tuning's knobs (the config's stylize.pivotal_* keys)."""
    steps: int = 1000
    lr: float = 0.006

    def describe(self) -> dict:
        return {"steps": self.steps, "lr": self.lr}


class PivotalTuner:
    """`tuner(images, w_plus)` -> one Delta per face ({synthesis weight name: change}, on the base G's device).
    Each face is tuned on its own from the untouched base G, so a face's delta does not depend on its batch."""

    def __init__(self, base_generator: nn.Module, lpips: ImageMetric, settings: PivotalSettings):
        if settings.steps < 1:
            raise ValueError(f"pivotal tuning needs at least one step; got steps={settings.steps} (0 = do not tune: "
                             f"leave the tuner out)")
        self.generator = base_generator.eval().requires_grad_(False)
        self.lpips = lpips
        self.settings = settings

    def _tune_one(self, image: torch.Tensor, w_plus: torch.Tensor) -> Delta:
        tuned = copy.deepcopy(self.generator)
        # the refiner's per-face loss (eye-band weighted L1 + LPIPS) with no anchor: here w stays, the weights move
        loss_of = CodeRefiner(tuned, self.lpips, RefineSettings(lpips_weight=1.0, anchor_weight=0.0)).per_face_loss
        weights = [p for name, p in tuned.named_parameters() if not name.startswith(MAPPING_PREFIX)]
        for p in weights:
            p.requires_grad_(True)
        optimiser = torch.optim.Adam(weights, lr=self.settings.lr)
        with torch.enable_grad():
            for _ in range(self.settings.steps):
                loss = loss_of(w_plus, image, w_plus).sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        before = dict(self.generator.named_parameters())
        return {name: (p - before[name]).detach() for name, p in tuned.named_parameters()
                if not name.startswith(MAPPING_PREFIX)}

    def __call__(self, images: torch.Tensor, w_plus: torch.Tensor) -> list[Delta]:
        check_faces_fit(self.generator, images, "pivotal tuning")
        if images.shape[0] != w_plus.shape[0]:
            raise ValueError(f"{images.shape[0]} faces but {w_plus.shape[0]} codes")
        device = self.generator.input.input.device
        images, w_plus = images.to(device).float(), w_plus.detach().to(device).float()
        return [self._tune_one(images[i:i + 1], w_plus[i:i + 1]) for i in range(images.shape[0])]


class DeltaRenderer:
    """Render faces each through `generator + its delta`, without touching `generator`: one scratch copy whose
    weights are overwritten per face (no model copy per face)."""

    def __init__(self, generator: nn.Module):
        self.scratch = copy.deepcopy(generator).eval().requires_grad_(False)
        self.original = {name: p.detach() for name, p in generator.named_parameters()}

    @torch.no_grad()
    def render(self, w_plus: torch.Tensor, deltas: list[Delta]) -> torch.Tensor:
        if len(deltas) != w_plus.shape[0]:
            raise ValueError(f"{w_plus.shape[0]} codes but {len(deltas)} pivotal deltas")
        params = dict(self.scratch.named_parameters())
        device = self.scratch.input.input.device
        images, loaded = [], None
        for i, delta in enumerate(deltas):
            if delta is not loaded:     # a face's samples repeat its delta back to back: load its weights once
                unknown = set(delta) - set(params)
                if unknown:
                    raise ValueError(f"pivotal delta names weights this generator lacks: {sorted(unknown)[:3]}: "
                                     f"the base G and the style generators must share one architecture")
                for name, p in params.items():
                    p.copy_(self.original[name] + delta[name].to(p) if name in delta else self.original[name])
                loaded = delta
            images.append(self.scratch.synthesis(w_plus[i:i + 1].to(device), randomize_noise=False))
        return torch.cat(images)


def pivotal_settings_from_config(stylize_config, steps: int | None = None) -> PivotalSettings:
    """The `stylize.pivotal_*` keys of a pipeline config (fstrain.settings.StylizeConfig); `steps` (a command
    line's --pivotal-steps) overrides pivotal_steps when given."""
    return PivotalSettings(steps=stylize_config.pivotal_steps if steps is None else steps,
                           lr=stylize_config.pivotal_lr)


def tuner_from_config(config, root: str, device: str | torch.device = "cpu", steps: int | None = None,
                      refiner: CodeRefiner | None = None) -> PivotalTuner | None:
    """The tuner a pipeline config asks for (stylize.pivotal_steps, `steps` overriding it; stylize.pivotal_lr);
    None when it asks for none. Its base G and perceptual net are the `refiner`'s when there is one (loaded once),
    else the config's (`base_models_from_config`, as the refiner loads them)."""
    settings = pivotal_settings_from_config(config.stylize, steps)
    if not settings.steps:
        return None
    if refiner is not None:
        return PivotalTuner(refiner.generator, refiner.lpips, settings)
    return PivotalTuner(*base_models_from_config(config, root, device), settings)
