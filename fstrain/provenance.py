"""What a derived artefact was made from, and whether it may be reused.

A provenance record is a flat JSON mapping of input name -> sha256 (files: dataset shards, generators, encoders,
identity and LPIPS nets) or -> a small dict of the settings that shaped the artefact. An artefact is reused only
when the record stored beside it equals the record its inputs give now; otherwise it is rebuilt, and
`changes(recorded, current)` says why in words a log can print:
    baseline generator changed (3fa2c1d0… → 91bc7e44…)
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from fstrain.data import storage

HASH_CHUNK = 1 << 20

# How each input is named in a log line; names not listed are printed as they are.
LABELS = {
    "dataset_shard": "dataset shard",
    "base_generator": "base generator",
    "baseline_generator": "baseline generator",
    "styled_generator": "fine-tuned generator",
    "encoder_zplus": "Z+ encoder",
    "encoder_wplus": "W+ encoder",
    "identity": "identity net",
    "lpips_backbone": "LPIPS net",
    "settings": "settings",
}


def sha256_uri(uri: str) -> str:
    """sha256 of a file or object, streamed (local path or s3://)."""
    digest = hashlib.sha256()
    with storage.open_read(uri) as stream:
        for block in iter(lambda: stream.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """sha256 of a JSON-able value in canonical form (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def short(value: Any) -> str:
    """A sha256 as its first 8 hex digits and an ellipsis; anything else as compact JSON."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:8] + "…"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _setting_changes(name: str, recorded: Mapping, current: Mapping) -> list[str]:
    changed = []
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            changed.append(f"{name}.{key} changed ({short(recorded.get(key))} → {short(current.get(key))})")
    return changed


def changes(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """Why an artefact with provenance `recorded` is stale for inputs `current` ([] when it may be reused)."""
    if recorded is None:
        return ["no provenance recorded"]
    reasons = []
    for name in sorted(set(recorded) | set(current)):
        label = LABELS.get(name, name)
        old, new = recorded.get(name), current.get(name)
        if old == new:
            continue
        if old is None:
            reasons.append(f"{label} is a new input")
        elif new is None:
            reasons.append(f"{label} is no longer an input")
        elif isinstance(old, Mapping) and isinstance(new, Mapping):
            reasons += _setting_changes(label, old, new)
        else:
            reasons.append(f"{label} changed ({short(old)} → {short(new)})")
    return reasons


def read_record(uri: str) -> dict | None:
    """The provenance stored at `uri`, or None when there is none (or it is unreadable: then it is stale)."""
    if not storage.exists(uri):
        return None
    try:
        record = storage.read_json(uri)
    except (ValueError, storage.StorageError):
        return None
    inputs = record.get("inputs") if isinstance(record, dict) else None
    return inputs if isinstance(inputs, dict) else None


def write_record(uri: str, inputs: Mapping[str, Any], **extra: Any) -> None:
    storage.write_json(uri, {"inputs": dict(inputs), **extra})
