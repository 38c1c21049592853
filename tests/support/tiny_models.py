"""Session fixture `tiny_models`: one set of tiny random models in the real file formats, for everybody's tests.

Written once per test session by `fstrain.models.init.init_models` (the same code as the CLI) into a temp dir:
a 32 px generator (channels capped at 32, 2-layer mapping, style_dim 512), tiny W+ / Z+ pSp encoders, a tiny
arcface IResNet and a RANDOM AlexNet LPIPS trunk. Treat the files as read-only: they are shared.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TINY_MODEL_ARGS: dict[str, Any] = {
    "size": 32, "style_dim": 512, "n_mlp": 2, "channel_multiplier": 1, "channel_max": 32,
    "encoder_depth": "tiny", "identity": "tiny", "lpips_net": "alex", "seed": 0,
}


@dataclass(frozen=True)
class TinyModels:
    root: Path
    generator: str          # rosinality .pt (g_ema, d, latent_avg) + .json sidecar
    encoder_wplus: str      # pSp layout, W+ (codes + latent_avg)
    encoder_zplus: str      # pSp layout, Z+
    identity: str           # arcface_torch raw state dict
    identity_kind: str      # "arcface" (tiny depth)
    lpips_backbone: str     # torchvision AlexNet features, RANDOM
    lpips_net: str          # "alex"
    size: int
    style_dim: int
    n_latent: int
    manifest: dict

    def models_config(self):
        """A `fstrain.settings.ModelsConfig` pointing at these files, pinned by sha256."""
        from fstrain.settings import ModelsConfig

        return ModelsConfig(base_generator=self.generator, encoder_wplus=self.encoder_wplus,
                            encoder_zplus=self.encoder_zplus, identity=self.identity,
                            lpips_backbone=self.lpips_backbone, identity_kind="auto", lpips_net=self.lpips_net,
                            sha256={name: entry["sha256"] for name, entry in self.manifest["models"].items()})


def make_tiny_models(root: Path, **overrides: Any) -> TinyModels:
    from fstrain.models.init import init_models

    args = {**TINY_MODEL_ARGS, **overrides}
    manifest = init_models(root, **args)
    models = manifest["models"]
    size = args["size"]
    return TinyModels(root=Path(root), generator=models["base_generator"]["uri"],
                      encoder_wplus=models["encoder_wplus"]["uri"], encoder_zplus=models["encoder_zplus"]["uri"],
                      identity=models["identity"]["uri"], identity_kind=models["identity"]["kind"],
                      lpips_backbone=models["lpips_backbone"]["uri"], lpips_net=models["lpips_backbone"]["net"],
                      size=size, style_dim=args["style_dim"], n_latent=2 * (size.bit_length() - 1) - 2,
                      manifest=manifest)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Paths of the shared tiny random model set (see module docstring)."""
    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def add_delta(generator, delta) -> None:
    """Add a pivotal delta ({weight name: change}) to `generator`'s weights in place: the tests' own, plain reference
    for what fstrain.stylize.DeltaRenderer renders."""
    import torch

    with torch.no_grad():
        for name, p in generator.named_parameters():
            if name in delta:
                p.add_(delta[name])
