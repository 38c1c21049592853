"""How a run's networks are found and loaded: model URIs from the config, fetched and hashed.

URI convention (shared with the pipeline configs): a model URI that is neither absolute (`/...`) nor carries a
scheme (`s3://...`, `file://...`) is relative to the pipeline root, so `models/generator.pt` in a config means
`<root>/models/generator.pt`. One YAML then serves a local demo root and an S3 root alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
from torch import nn

from fstrain.models import registry
from fstrain.models.checkpoints import LoadedGenerator
from fstrain.models.hub import ModelHub
from fstrain.settings import ModelsConfig

MODES = ("baseline", "sc", "pc", "sc+pc")
T = TypeVar("T")


class ModelMissingError(FileNotFoundError):
    """A model the run needs is missing, unreadable, of the wrong size or fails its `models.sha256` pin; the message
    names the config key, URI and the fix."""


# What the hub raises for a model file the run cannot use (a user's file or config, not a bug).
UNUSABLE = (registry.MissingWeightsError, registry.ChecksumError, registry.WeightsMismatchError)


def mode_terms(mode: str) -> tuple[bool, bool]:
    """(uses L_sem, uses L_pair) for a mode; the paper's ablation is just this switch."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return "sc" in mode, "pc" in mode


def _through_hub(load: Callable[[], T]) -> T:
    """Run a hub call; a model the run cannot use becomes a ModelMissingError with the hub's keyed message."""
    try:
        return load()
    except UNUSABLE as exc:
        raise ModelMissingError(str(exc)) from exc


def model_sha256(models: ModelsConfig, field_name: str, root: str) -> str:
    """sha256 of a configured model's file (fetched once per machine, checked against its pin)."""
    return _through_hub(lambda: ModelHub(models, root).sha256(field_name))


@dataclass
class BaseModel:
    loaded: LoadedGenerator
    uri: str
    sha256: str


def load_base_generator(models: ModelsConfig, root: str, expected_size: int | None = None) -> BaseModel:
    """models.base_generator through the model hub (any supported format; `base_generator_which` picks g_ema/g);
    `expected_size` (data.image_size) refuses a generator of another resolution; a `models.sha256` pin is checked."""
    hub = ModelHub(models, root)
    loaded = _through_hub(lambda: hub.generator(expected_size=expected_size))
    return BaseModel(loaded=loaded, uri=hub.uri("base_generator"), sha256=model_sha256(models, "base_generator", root))


def load_lpips_metric(models: ModelsConfig, root: str) -> nn.Module:
    return _through_hub(lambda: ModelHub(models, root).lpips())


def load_identity_net(models: ModelsConfig, root: str) -> nn.Module:
    return _through_hub(lambda: ModelHub(models, root).identity())


def frozen(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def clone_module(module: nn.Module) -> nn.Module:
    import copy
    clone = copy.deepcopy(module)
    with torch.no_grad():
        for p in clone.parameters():
            p.requires_grad_(True)
    return clone
