"""The study's evaluation instruments, each with a label saying what it is, so no number hides its source.

Four roles: the FID feature net, the perceptual net (LPIPS), the evaluation identity net and the attribute reader.
Each comes from the study config's `evaluation` section; a role left empty falls back to what the pipeline has
(the pipeline's Inception weights, its training LPIPS / identity nets) and the label says so. Weights marked
random (a `<file>.json` sidecar with `random_init`, or a `models.json` beside them that says so) are labelled
RANDOM; the report prints every label above its tables.

An attribute reader is any object with
    random_init: bool
    kinds: dict[str, str]                       # attribute name -> "categorical" | "continuous"
    __call__(images (N,3,H,W) in [-1,1]) -> dict[str, Tensor]   # categorical: (N, classes) logits,
                                                                # continuous: (N, k) values scaled to [0, 1]
made by the factory the config names as "package.module:function" (called with the weights URI and the device).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from fstrain.data import storage
from fstrain.settings import PipelineConfig, resolve_model_uri
from fstrain.study.settings import StudyEvaluationConfig


@runtime_checkable
class AttributeReader(Protocol):
    random_init: bool
    kinds: dict[str, str]

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class Instrument:
    role: str                  # "FID feature net", ...
    uri: str | None
    status: str                # evaluation | training-loss net | RANDOM | not configured
    note: str = ""

    @property
    def label(self) -> str:
        where = f" ({self.uri})" if self.uri else ""
        return f"{self.role}: {self.status}{where}{'; ' + self.note if self.note else ''}"


@dataclass
class Instruments:
    extractor: Any | None            # fstrain.metrics.FeatureExtractor
    lpips: nn.Module
    identity: nn.Module | None
    attributes: AttributeReader | None
    labels: list[Instrument] = field(default_factory=list)

    def describe(self) -> list[dict]:
        return [{"role": i.role, "uri": i.uri, "status": i.status, "note": i.note, "label": i.label}
                for i in self.labels]

    @property
    def any_random(self) -> bool:
        return any(i.status == "RANDOM" for i in self.labels)


def marked_random(uri: str) -> bool:
    """True when the file's sidecar or its folder's models.json says the weights are randomly initialised."""
    try:
        sidecar = f"{uri}.json"
        if storage.exists(sidecar) and storage.read_json(sidecar).get("random_init"):
            return True
        manifest = storage.join(storage.dirname(uri), "models.json")
        if storage.exists(manifest):
            data = storage.read_json(manifest)
            files = {entry.get("file") for entry in (data.get("models") or {}).values() if isinstance(entry, dict)}
            return bool(data.get("random_init")) and storage.basename(uri) in files
    except (storage.StorageError, ValueError, AttributeError):
        return False
    return False


def _status(uri: str, dedicated: bool) -> str:
    if marked_random(uri):
        return "RANDOM"
    return "evaluation net" if dedicated else "training-loss net (no separate evaluation net configured)"


def load_factory(spec: str) -> Callable[..., AttributeReader]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"evaluation.attribute_reader must be 'package.module:function'; got {spec!r}")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"evaluation.attribute_reader {spec!r} cannot be imported: {exc}") from None


def load_instruments(cfg: StudyEvaluationConfig, pipeline: PipelineConfig, root: str,
                     device: torch.device) -> Instruments:
    from fstrain.metrics import load_inception
    from fstrain.models.identity import load_identity
    from fstrain.models.perceptual import load_lpips
    from fstrain.models.registry import fetch

    labels: list[Instrument] = []
    # FID features
    feature_uri = resolve_model_uri(cfg.feature_net or pipeline.evaluate.inception_weights, root)
    extractor = None
    if feature_uri:
        extractor = load_inception(feature_uri, layout=cfg.feature_net_layout, input_size=cfg.feature_input_size,
                                   device=device)
        status = "RANDOM" if extractor.random_init or marked_random(feature_uri) else (
            "evaluation net" if cfg.feature_net else "the pipeline's evaluate.inception_weights")
        labels.append(Instrument("FID feature net", feature_uri, status, extractor.name))
    else:
        labels.append(Instrument("FID feature net", None, "not configured", "FID not computed"))
    # Perceptual
    lpips_uri = resolve_model_uri(cfg.lpips_backbone or pipeline.models.lpips_backbone, root)
    lpips_net = cfg.lpips_net or pipeline.models.lpips_net
    lpips = load_lpips(str(fetch(lpips_uri)), net=lpips_net).to(device).eval().requires_grad_(False)
    labels.append(Instrument("perceptual net", lpips_uri, _status(lpips_uri, bool(cfg.lpips_backbone)),
                             f"LPIPS-{lpips_net}"))
    # Identity
    identity_uri = resolve_model_uri(cfg.identity or pipeline.models.identity, root)
    identity = None
    if identity_uri:
        identity = load_identity(str(fetch(identity_uri)), cfg.identity_kind if cfg.identity else
                                 pipeline.models.identity_kind, device=device)
        labels.append(Instrument("identity net", identity_uri, _status(identity_uri, bool(cfg.identity))))
    else:
        labels.append(Instrument("identity net", None, "not configured", "retrieval not computed"))
    # Attribute reader
    attributes = None
    if cfg.attribute_reader:
        weights = resolve_model_uri(cfg.attribute_reader_weights, root)
        attributes = load_factory(cfg.attribute_reader)(weights, device)
        if not isinstance(attributes, AttributeReader):
            raise ValueError(f"evaluation.attribute_reader {cfg.attribute_reader!r} returned "
                             f"{type(attributes).__name__}, which lacks random_init / kinds / __call__")
        status = "RANDOM" if attributes.random_init or (weights and marked_random(weights)) else "evaluation net"
        labels.append(Instrument("attribute reader", weights or cfg.attribute_reader, status,
                                 f"attributes: {', '.join(sorted(attributes.kinds))}"))
    else:
        labels.append(Instrument("attribute reader", None, "not configured",
                                 "GT attribute error not computed (set evaluation.attribute_reader)"))
    return Instruments(extractor=extractor, lpips=lpips, identity=identity, attributes=attributes, labels=labels)


@torch.no_grad()
def attribute_error(reader: AttributeReader, outputs: torch.Tensor, truths: torch.Tensor) -> dict[str, float]:
    """Per attribute, how far the reader's reading of each output is from its reading of the true render:
    categorical = fraction of images whose predicted class differs; continuous = mean absolute difference (the
    reader scales continuous attributes to [0, 1], so 0.1 = 10 % of the range). `mean` averages the attributes."""
    a, b = reader(outputs), reader(truths)
    errors = {}
    for name, kind in sorted(reader.kinds.items()):
        if kind == "categorical":
            errors[name] = float((a[name].argmax(1) != b[name].argmax(1)).float().mean())
        elif kind == "continuous":
            errors[name] = float((a[name].float() - b[name].float()).abs().mean())
        else:
            raise ValueError(f"attribute reader: kind of {name!r} must be categorical or continuous; got {kind!r}")
    errors["mean"] = float(sum(errors.values()) / max(1, len(errors)))
    return errors
