"""Training checkpoints of one fine-tuning run, and publishing its final generator.

Layout under a run directory `<root>/runs/<run>/<style>/<mode>/`:
    checkpoints/step-000010.pt   {"g", "g_ema", "d", "g_optim", "d_optim", "step", "rng", "data", "config", ...}
    latest.json                  {"step": 10, "checkpoint": "checkpoints/step-000010.pt"}   (written last)
    final/generator.pt (+.json)  g_ema in rosinality's layout {"g_ema", "latent_avg"} with run metadata

Every file is written atomically (storage.write_bytes), and `latest.json` only after the checkpoint it names,
so a crash at any point leaves the previous consistent state. Checkpoints load with weights_only=True: the
RNG states are stored as tensors and plain Python values for that reason.
"""
from __future__ import annotations

import hashlib
import io
import random
from typing import Any, Callable

import numpy as np
import torch

from fstrain import layout, provenance
from fstrain.data import storage
from fstrain.models.checkpoints import metadata_uri


class ResumeError(RuntimeError):
    """A run directory's checkpoint cannot be resumed; the message names the file and the way out."""


# ---------------------------------------------------------------- RNG state (weights_only friendly)


def capture_rng_state() -> dict[str, Any]:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- save / load


def save_checkpoint(run_dir_uri: str, step: int, payload: dict[str, Any]) -> str:
    """Write `checkpoints/step-N.pt`, then point `latest.json` at it. Returns the checkpoint URI."""
    uri = layout.checkpoint(run_dir_uri, step)
    buffer = io.BytesIO()
    torch.save({**payload, "step": step}, buffer)
    storage.write_bytes(uri, buffer.getvalue())
    storage.write_json(layout.latest(run_dir_uri), {"step": step, "checkpoint": layout.checkpoint_name(step)})
    return uri


def latest_checkpoint(run_dir_uri: str) -> tuple[int, str] | None:
    """(step, checkpoint URI) named by latest.json, or None for a fresh run directory."""
    latest_uri = layout.latest(run_dir_uri)
    if not storage.exists(latest_uri):
        return None
    try:
        latest = storage.read_json(latest_uri)
        step, name = int(latest["step"]), str(latest["checkpoint"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ResumeError(f"{latest_uri}: unreadable ({exc}); delete it to resume from an older checkpoint "
                          f"or use a new run id") from exc
    return step, storage.join(run_dir_uri, name)


def load_checkpoint(uri: str) -> dict[str, Any]:
    try:
        data = storage.read_bytes(uri)
    except storage.NotFoundError as exc:
        raise ResumeError(f"{uri}: named by latest.json but missing; restore it, fix latest.json or use a new "
                          f"run id") from exc
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ResumeError(f"{uri}: not a loadable checkpoint ({exc}); use a new run id or fix latest.json") from exc


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    if isinstance(saved, dict) and isinstance(current, dict):
        diffs: list[str] = []
        for key in sorted(set(saved) | set(current)):
            diffs += config_differences(saved.get(key), current.get(key), f"{prefix}{key}.")
        return diffs
    return [] if saved == current else [prefix.rstrip(".")]


# ---------------------------------------------------------------- publishing


def publish_generator(run_dir_uri: str, dest_uri: str, log: Callable[[str], None] = print) -> str:
    """Copy a finished run's final generator (rosinality layout) and its metadata sidecar to `dest_uri`.

    The published sidecar records the run's inputs (see FineTuneRun) plus the sha256 of the copied weights
    (`styled_generator`). When `dest_uri` already holds exactly those weights with that record, nothing is copied;
    otherwise it is replaced and `log` says what changed. The sidecar goes first and the weights last, so a reader
    that finds `dest_uri` also finds its metadata (and a crash in between is caught by the weights' hash).
    """
    source = layout.final_generator(run_dir_uri)
    if not storage.exists(source):
        raise ResumeError(f"{source}: the run has no final generator yet; finish the run (same run id) first")
    weights = storage.read_bytes(source)
    metadata = storage.read_json(metadata_uri(source))
    inputs = {**(metadata.get("inputs") or {}), "styled_generator": hashlib.sha256(weights).hexdigest()}
    if storage.exists(dest_uri):
        recorded = provenance.read_record(metadata_uri(dest_uri))
        reasons = provenance.changes(recorded, inputs)
        if not reasons and provenance.sha256_uri(dest_uri) == inputs["styled_generator"]:
            log(f"{dest_uri}: already published from the same inputs; kept")
            return dest_uri
        log(f"{dest_uri} republished: {'; '.join(reasons) or 'its weights differ from its record'}")
    storage.write_json(metadata_uri(dest_uri), {**metadata, "inputs": inputs, "published_from": source})
    storage.write_bytes(dest_uri, weights)
    return dest_uri
