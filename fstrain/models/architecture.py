"""What a state dict says about its network, and fitting it strictly: the pieces every generator reader shares
(rosinality files in `checkpoints`, NVIDIA pickles in `nvidia_pkl`), kept below both so neither imports the other."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from fstrain.models.errors import CheckpointError
from fstrain.models.stylegan2 import Discriminator, Generator, channel_table

MEAN_LATENT_SAMPLES = 4096  # rosinality's generate.py / projector.py use 4096 samples too


@dataclass
class LoadedGenerator:
    generator: Generator
    latent_avg: torch.Tensor  # (style_dim,)
    discriminator: Discriminator | None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                        ignore_missing: Iterable[str] = ()) -> str | None:
    """Every missing, unexpected and wrongly shaped key (the first six spelled out), or None when `state` fits."""
    ignore = tuple(ignore_missing)
    missing = [k for k in expected if k not in state and not (ignore and k.endswith(ignore))]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = [f"missing key '{k}' (expected shape {tuple(expected[k].shape)})" for k in missing]
    problems += [f"unexpected key '{k}' (shape {tuple(state[k].shape)})" for k in unexpected]
    problems += [f"shape mismatch for '{k}': file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                 for k in mismatched]
    if not problems:
        return None
    return "; ".join(problems[:6]) + (f"; ... {len(problems) - 6} more" if len(problems) > 6 else "")


# ---------------------------------------------------------------- architecture inference


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.fullmatch(k))})


def _match_channel_table(observed: dict[int, int], preferred_multiplier: int | None, uri: str,
                         what: str) -> tuple[int, int]:
    """(channel_multiplier, channel_max) whose table reproduces the observed channels per resolution.

    Prefers rosinality's uncapped table (channel_max 512) and the recorded / default multiplier when several fit
    (at <= 32 px every multiplier gives the same table).
    """
    multipliers = [m for m in (preferred_multiplier, 2, 1, 4, 3, 5, 6, 7, 8) if m]
    caps = [512] + sorted(set(observed.values()), reverse=True)
    for cap in caps:
        for multiplier in multipliers:
            table = channel_table(multiplier, cap)
            if all(table[res] == ch for res, ch in observed.items()):
                return multiplier, cap
    raise CheckpointError(f"{uri}: {what} channels per resolution {dict(sorted(observed.items()))} match no "
                          f"rosinality channel table (channel_multiplier 1..8, optionally capped)")


def _require(state: Mapping[str, torch.Tensor], key: str, uri: str, what: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{uri}: {what}: missing key '{key}'; is this a rosinality StyleGAN2 checkpoint?")
    return state[key]


def infer_generator_architecture(state: Mapping[str, torch.Tensor], uri: str = "<state dict>",
                                 hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Generator constructor arguments read off a rosinality state dict (hints fill in what weights cannot show)."""
    hints = dict(hints or {})
    what = "generator"
    n_mlp = len(_indices(state, r"style\.(\d+)\.weight"))
    style_dim = _require(state, "conv1.conv.modulation.weight", uri, what).shape[1]
    n_to_rgbs = len(_indices(state, r"to_rgbs\.(\d+)\.bias"))
    log_size = n_to_rgbs + 2
    observed = {4: _require(state, "conv1.conv.weight", uri, what).shape[1]}
    for i in range(3, log_size + 1):
        observed[2 ** i] = _require(state, f"convs.{2 * (i - 3)}.conv.weight", uri, what).shape[1]
    multiplier, cap = _match_channel_table(observed, hints.get("channel_multiplier"), uri, what)
    return {"size": 2 ** log_size, "style_dim": int(style_dim), "n_mlp": n_mlp, "channel_multiplier": multiplier,
            "channel_max": cap, "blur_kernel": tuple(hints.get("blur_kernel", (1, 3, 3, 1))),
            "lr_mlp": float(hints.get("lr_mlp", 0.01))}


def infer_discriminator_architecture(state: Mapping[str, torch.Tensor], uri: str = "<state dict>",
                                     hints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    hints = dict(hints or {})
    what = "discriminator"
    n_blocks = len(_indices(state, r"convs\.(\d+)\.conv1\.0\.weight"))
    log_size = n_blocks + 2
    size = 2 ** log_size
    observed = {size: _require(state, "convs.0.0.weight", uri, what).shape[0],
                4: _require(state, "final_conv.0.weight", uri, what).shape[0]}
    for j in range(1, n_blocks + 1):
        observed[2 ** (log_size - j)] = _require(state, f"convs.{j}.conv2.1.weight", uri, what).shape[0]
    multiplier, cap = _match_channel_table(observed, hints.get("channel_multiplier"), uri, what)
    return {"size": size, "channel_multiplier": multiplier, "channel_max": cap,
            "blur_kernel": tuple(hints.get("blur_kernel", (1, 3, 3, 1)))}


# ---------------------------------------------------------------- strict loading


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], uri: str, what: str) -> None:
    """load_state_dict(strict=True) with errors that name the file, every offending key and both shapes."""
    problems = state_dict_mismatch(module.state_dict(), state)
    if problems:
        raise CheckpointError(f"{uri}: {what} does not match the rosinality layout: {problems}")
    module.load_state_dict(state, strict=True)
