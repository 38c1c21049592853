"""Load and save StyleGAN2 generators in rosinality/stylegan2-pytorch's checkpoint layout.

Accepted inputs (torch files read with `torch.load(weights_only=True)`, see `fstrain.models.formats`):
- converted checkpoints `{"g_ema", "latent_avg"}` (optionally `"g"`, `"d"`),
- training checkpoints `{"g", "d", "g_ema", "g_optim", "d_optim", "args", "ada_aug_p"}`; `args` is an
  argparse.Namespace, allow-listed for the weights-only unpickler,
- generator-only files `{"g"}` (JoJoGAN and others) or `{"g_ema"}`, and a bare generator state dict,
- NVIDIA stylegan2-ada-pytorch network pickles (`.pkl`), read without running their code (`nvidia_pkl`).
`which` picks the generator: "g_ema" (default; a file holding only "g" is read with a notice) or "g".
The architecture (size, style_dim, n_mlp, channel table) is read off the state dict itself, so any rosinality
file loads without flags; loading is strict and errors name the file, the key and both shapes.

What we write: `{"g_ema", "latent_avg"[, "d"]}` (readable by rosinality's own scripts) plus a `<uri>.json`
sidecar with our metadata and the architecture (`lr_mlp`, `channel_max`, ... that weights cannot show).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
from typing import Any, Mapping

import torch
from torch import nn

from fstrain.models import formats
from fstrain.models.architecture import (MEAN_LATENT_SAMPLES, LoadedGenerator,  # noqa: F401 (re-exported)
                                         infer_discriminator_architecture, infer_generator_architecture,
                                         load_state_strict)
from fstrain.models.errors import CheckpointError
from fstrain.models.stylegan2 import Discriminator, Generator

FORMAT_NAME = "rosinality-stylegan2"


WHICH = ("g_ema", "g")
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- byte I/O (storage URIs or local paths)


def _storage():
    # Imported lazily: the storage module pulls in boto3/pyarrow, which local-only model code does not need.
    from fstrain.data import storage
    return storage


def _read_bytes(uri: str) -> bytes:
    return _storage().read_bytes(uri)


def _write_bytes(uri: str, data: bytes) -> None:
    """Atomic write (storage: temp + rename locally, one PUT on S3): readers see the old file or the whole new one."""
    _storage().write_bytes(uri, data)


def _exists(uri: str) -> bool:
    return _storage().exists(uri)


def metadata_uri(uri: str) -> str:
    """The sidecar metadata file of a checkpoint: `<uri>.json`."""
    return uri + ".json"


def _not_found(exc: Exception) -> bool:
    return isinstance(exc, (FileNotFoundError, _storage().NotFoundError))


def read_checkpoint(uri: str, map_location: str | torch.device = "cpu", label: str | None = None) -> dict[str, Any]:
    """A checkpoint's top-level dict: torch files weights-only (argparse.Namespace of training checkpoints allowed),
    network pickles as `nvidia_pkl` records. Every failure is one CheckpointError line naming `label` (default
    `uri`; the hub passes the configured URI when reading a cached copy)."""
    name = label or uri
    try:
        source: Any = uri if os.path.isfile(uri) else _read_bytes(uri)
    except Exception as exc:
        if _not_found(exc):
            raise CheckpointError(f"{name}: checkpoint not found; check the path or URI") from exc
        raise
    _, checkpoint = formats.read_weights(source, name, safe_globals=[argparse.Namespace])
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{name}: expected a dict checkpoint (rosinality {{'g_ema', 'latent_avg'}} or a "
                              f"network pickle), got {type(checkpoint).__name__}")
    return dict(checkpoint)


def pick_generator(checkpoint: Mapping[str, Any], uri: str, which: str) -> tuple[str, Mapping[str, torch.Tensor]]:
    """(entry used, its state dict). `which="g_ema"` falls back to "g" with a notice when only "g" exists."""
    if which not in WHICH:
        raise CheckpointError(f"{uri}: which={which!r}; choose 'g_ema' (the averaged generator) or 'g'")
    entry = which
    if entry not in checkpoint and which == "g_ema" and "g" in checkpoint:
        entry = "g"
        log.warning("%s: no 'g_ema' in the file, using its 'g' (training weights, not the moving average)", uri)
    if entry not in checkpoint:
        present = [k for k in WHICH if k in checkpoint]
        hint = f"set which: {present[0]}" if present else "expected {'g_ema', 'latent_avg'} or {'g'}"
        raise CheckpointError(f"{uri}: no '{which}' generator in the file (it has "
                              f"{sorted(map(str, checkpoint))[:8]}); {hint}")
    state = checkpoint[entry]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{uri}: '{entry}' is a {type(state).__name__}, expected a state dict")
    return entry, state


def check_size(generator: Generator, uri: str, expected_size: int | None, setting: str) -> None:
    """One line when a file's generator has another resolution than the configuration asks for."""
    if expected_size is not None and generator.size != expected_size:
        raise CheckpointError(f"{uri}: a {generator.size} px generator, but {setting} is {expected_size}; point the "
                              f"config at a {expected_size} px generator or set {setting}: {generator.size}")


# ---------------------------------------------------------------- public API


def _architecture_hints(checkpoint: Mapping[str, Any], metadata: Mapping[str, Any], key: str) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    args = checkpoint.get("args")
    if isinstance(args, argparse.Namespace) and hasattr(args, "channel_multiplier"):
        hints["channel_multiplier"] = int(args.channel_multiplier)
    hints.update(metadata.get(key) or {})
    return hints


def _read_metadata(uri: str) -> dict[str, Any]:
    sidecar = metadata_uri(uri)
    if not _exists(sidecar):
        return {}
    try:
        return json.loads(_read_bytes(sidecar).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{sidecar}: metadata sidecar is not valid JSON ({exc}); fix or delete it") from exc


def load_generator(path_or_uri: str, *, map_location: str | torch.device = "cpu", which: str = "g_ema",
                   load_discriminator: bool = True, expected_size: int | None = None,
                   size_setting: str = "the configured size", label: str | None = None,
                   metadata: Mapping[str, Any] | None = None) -> LoadedGenerator:
    """Build and strictly load a Generator (and the Discriminator when the file has one) from a checkpoint.

    `which` picks the generator weights ("g_ema" or "g", see `pick_generator`). `latent_avg` comes from the file
    (NVIDIA: `w_avg`); training checkpoints lack it, so it is then computed as mean_latent(4096) with seed 0 and
    metadata says so. `expected_size` refuses a generator of another resolution in one line naming `size_setting`.
    `label` names the file in errors and in `source` (a cached copy's URI); `metadata` replaces the sidecar read.
    """
    path = str(path_or_uri)
    uri = label or path
    checkpoint = read_checkpoint(path, label=uri)
    from fstrain.models import nvidia_pkl
    if nvidia_pkl.is_network_pickle(checkpoint):
        loaded = nvidia_pkl.loaded_from_pickle(checkpoint, uri, which, load_discriminator, map_location)
        check_size(loaded.generator, uri, expected_size, size_setting)
        return loaded
    metadata = dict(metadata) if metadata is not None else _read_metadata(path)

    if "conv1.conv.weight" in checkpoint:  # a bare generator state dict
        checkpoint = {which: checkpoint}
    entry, state = pick_generator(checkpoint, uri, which)

    arch = infer_generator_architecture(state, uri, _architecture_hints(checkpoint, metadata, "architecture"))
    generator = Generator(**arch)
    load_state_strict(generator, state, uri, f"generator '{entry}'")
    check_size(generator, uri, expected_size, size_setting)
    generator = generator.to(map_location).eval()

    metadata = dict(metadata)
    if "args" in checkpoint and isinstance(checkpoint["args"], argparse.Namespace):
        metadata.setdefault("training_args", {k: v for k, v in vars(checkpoint["args"]).items()
                                              if isinstance(v, (int, float, str, bool, type(None)))})
    if "latent_avg" in checkpoint and checkpoint["latent_avg"] is not None:
        latent_avg = torch.as_tensor(checkpoint["latent_avg"]).reshape(-1)
        if latent_avg.numel() != generator.style_dim:
            raise CheckpointError(f"{uri}: 'latent_avg' has {latent_avg.numel()} values, the generator's style_dim "
                                  f"is {generator.style_dim}")
        latent_avg = latent_avg.to(map_location, torch.float32)
    else:
        rng = torch.Generator().manual_seed(0)
        latent_avg = generator.mean_latent(MEAN_LATENT_SAMPLES, generator=rng).reshape(-1)
        metadata["latent_avg_source"] = f"computed: mean_latent({MEAN_LATENT_SAMPLES}, seed=0)"

    discriminator = None
    if load_discriminator and isinstance(checkpoint.get("d"), Mapping):
        d_state = checkpoint["d"]
        d_arch = infer_discriminator_architecture(d_state, uri,
                                                  _architecture_hints(checkpoint, metadata,
                                                                      "discriminator_architecture"))
        discriminator = Discriminator(**d_arch)
        load_state_strict(discriminator, d_state, uri, "discriminator 'd'")
        discriminator = discriminator.to(map_location).eval()

    return LoadedGenerator(generator=generator, latent_avg=latent_avg, discriminator=discriminator,
                           metadata=metadata, source=uri)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in module.state_dict().items()}


def save_generator(path_or_uri: str, g_ema: Generator, latent_avg: torch.Tensor,
                   metadata: Mapping[str, Any] | None = None, discriminator: Discriminator | None = None) -> str:
    """Write `{"g_ema", "latent_avg"[, "d"]}` (rosinality layout) atomically, then the `<uri>.json` sidecar.

    Returns the checkpoint URI. Metadata must be JSON-serialisable.
    """
    uri = str(path_or_uri)
    latent_avg = torch.as_tensor(latent_avg).detach().to("cpu", torch.float32).reshape(-1)
    if latent_avg.numel() != g_ema.style_dim:
        raise ValueError(f"latent_avg has {latent_avg.numel()} values, expected style_dim={g_ema.style_dim}")
    sidecar = {"format": FORMAT_NAME, **dict(metadata or {}), "architecture": g_ema.architecture()}
    if discriminator is not None:
        sidecar["discriminator_architecture"] = discriminator.architecture()
    try:
        sidecar_text = json.dumps(sidecar, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"{uri}: metadata must be JSON-serialisable ({exc})") from exc

    payload: dict[str, Any] = {"g_ema": _cpu_state(g_ema), "latent_avg": latent_avg}
    if discriminator is not None:
        payload["d"] = _cpu_state(discriminator)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    _write_bytes(uri, buffer.getvalue())
    _write_bytes(metadata_uri(uri), sidecar_text.encode("utf-8"))
    return uri
