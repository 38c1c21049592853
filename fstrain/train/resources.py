"""How a run's networks are found and loaded: model URIs from the config, fetched and hashed.

URI convention (shared with the pipeline configs): a model URI that is neither absolute (`/...`) nor carries a
scheme (`s3://...`, `file://...`) is relative to the pipeline root, so `models/generator.pt` in a config means
`<root>/models/generator.pt`. One YAML then serves a local demo root and an S3 root alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fstrain.models import registry
from fstrain.models.checkpoints import LoadedGenerator
from fstrain.models.hub import ModelHub
from fstrain.settings import ModelsConfig

MODES = ("baseline", "sc", "pc", "sc+pc")


class ModelMissingError(FileNotFoundError):
    """A model the run needs is missing or unreadable; the message names the config key, URI and the fix."""


def mode_terms(mode: str) -> tuple[bool, bool]:
    """(uses L_sem, uses L_pair) for a mode; the paper's ablation is just this switch."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return "sc" in mode, "pc" in mode


def _fetch(models: ModelsConfig, field_name: str, root: str) -> tuple[str, str]:
    """(resolved URI, local path) of a configured model, with a message that says what to do when absent."""
    hub = ModelHub(models, root)
    try:
        return hub.uri(field_name), str(hub.path(field_name))
    except registry.MissingWeightsError as exc:
        raise ModelMissingError(str(exc)) from exc


def model_sha256(models: ModelsConfig, field_name: str, root: str) -> str:
    """sha256 of a configured model's file (fetched once per machine)."""
    return registry.sha256_file(_fetch(models, field_name, root)[1])


@dataclass
class BaseModel:
    loaded: LoadedGenerator
    uri: str
    sha256: str


def load_base_generator(models: ModelsConfig, root: str, expected_size: int | None = None) -> BaseModel:
    """models.base_generator through the model hub (any supported format; `base_generator_which` picks g_ema/g);
    `expected_size` (data.image_size) refuses a generator of another resolution."""
    uri, path = _fetch(models, "base_generator", root)
    try:
        loaded = ModelHub(models, root).generator(expected_size=expected_size)
    except registry.WeightsMismatchError as exc:
        raise ModelMissingError(str(exc)) from exc
    return BaseModel(loaded=loaded, uri=uri, sha256=registry.sha256_file(path))


def load_lpips_metric(models: ModelsConfig, root: str) -> nn.Module:
    _fetch(models, "lpips_backbone", root)  # a missing file is a ModelMissingError naming the key
    return ModelHub(models, root).lpips().eval().requires_grad_(False)


def load_identity_net(models: ModelsConfig, root: str) -> nn.Module:
    _fetch(models, "identity", root)
    return ModelHub(models, root).identity().eval().requires_grad_(False)


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
