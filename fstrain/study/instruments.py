"""The study's evaluation instruments, each with a label saying what it is, so no number hides its source.

Four roles: the FID feature net, the perceptual net (LPIPS), the evaluation identity net and the attribute reader.
Each study config key (`evaluation.*`) is a URI, "none", or "auto":
- feature_net / identity / attribute_reader "auto": the evaluation nets listed in the `evaluation` section of
  `<root>/models/models.json` (written by `python -m fstrain.world.pretrain`: `inception_weights` is the world's
  image reader, whose pooled features are the FID features and whose heads read attributes; `identity` the
  evaluation identity net). Without that section: the pipeline's `evaluate.inception_weights` (FID) and
  `models.identity` (the training-loss identity net, labelled as such); no attribute reader.
- lpips_backbone "auto": the evaluation perceptual net models.json lists (`lpips_backbone` in its evaluation
  section: a second world LPIPS trained on EVAL identities), else the pipeline's LPIPS net, labelled as such.
Weights marked random (a `<file>.json` sidecar with `random_init`, or a `models.json` beside them that says so)
are labelled RANDOM; the report prints every label above its tables.

An attribute reader is any object with `random_init`, `kinds` (attribute -> "categorical" | "continuous") and
`__call__(images in [-1, 1]) -> {attribute: (N, classes) logits or (N, k) values in 0..1}`; the world's image
reader (fstrain.models.reader) is wrapped as one by `WorldAttributeReader`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from fstrain.data import storage
from fstrain.models.hub import identity_at, lpips_at, reader_at, resolve_uri
from fstrain.settings import PipelineConfig
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


AUTO, NONE = "auto", "none"
# The world image reader's heads that describe the person (fstrain.world.attributes): identity-level classes, face
# shape, and the colours the domain painted (what the truth render shows in the same domain).
CATEGORICAL_ATTRIBUTES = ("hair_style", "glasses", "bangs", "eye_colour")
CONTINUOUS_ATTRIBUTES = ("face_shape", "painted_skin", "painted_hair")


class WorldAttributeReader:
    """The AttributeReader protocol over a world image reader's heads (fstrain.models.reader.ImageReader)."""

    def __init__(self, reader: nn.Module, random_init: bool):
        self.reader = reader.eval().requires_grad_(False)
        self.random_init = random_init
        heads = set(reader.heads)
        self.kinds = {**{n: "categorical" for n in CATEGORICAL_ATTRIBUTES if n in heads},
                      **{n: "continuous" for n in CONTINUOUS_ATTRIBUTES if n in heads}}
        if not self.kinds:
            wanted = ", ".join(CATEGORICAL_ATTRIBUTES + CONTINUOUS_ATTRIBUTES)
            raise ValueError(f"the image reader has no attribute heads ({wanted}); it has {sorted(heads)}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.reader(images)
        return {name: out[name].float() for name in self.kinds}


def models_manifest_evaluation(root: str) -> dict[str, str]:
    """role -> URI of the evaluation nets `<root>/models/models.json` lists (empty when it lists none)."""
    from fstrain import layout
    manifest_uri = layout.model_manifest(layout.models(root))
    if not storage.exists(manifest_uri):
        return {}
    section = storage.read_json(manifest_uri).get("evaluation") or {}
    return {role: storage.join(layout.models(root), entry["file"]) for role, entry in section.items()
            if isinstance(entry, dict) and entry.get("file")}


@dataclass
class Resolved:
    """Where each instrument comes from, decided before any training starts (so a missing file fails early)."""
    feature_net: str | None
    feature_dedicated: bool
    identity: str | None
    identity_kind: str
    identity_dedicated: bool
    lpips: str
    lpips_net: str
    lpips_dedicated: bool
    attribute_reader: str | None

    def uris(self) -> dict[str, str]:
        return {k: v for k, v in (("evaluation.feature_net", self.feature_net), ("evaluation.identity",
                                                                                 self.identity),
                                  ("evaluation.lpips_backbone", self.lpips),
                                  ("evaluation.attribute_reader", self.attribute_reader)) if v}


def resolve_instruments(cfg: StudyEvaluationConfig, pipeline: PipelineConfig, root: str) -> Resolved:
    listed = models_manifest_evaluation(root)

    def pick(value: str, listed_role: str | None, fallback: str) -> tuple[str | None, bool]:
        if value == NONE:
            return None, False
        if value != AUTO:
            return resolve_uri(value, root), True
        if listed_role and listed_role in listed:
            return listed[listed_role], True
        return (resolve_uri(fallback, root) or None), False

    feature, feature_dedicated = pick(cfg.feature_net, "inception_weights", pipeline.evaluate.inception_weights)
    identity, identity_dedicated = pick(cfg.identity, "identity", pipeline.models.identity)
    lpips, lpips_dedicated = pick(cfg.lpips_backbone, "lpips_backbone", pipeline.models.lpips_backbone)
    if lpips is None:
        raise ValueError("evaluation.lpips_backbone cannot be 'none': the perceptual and semantic distances need it")
    reader, _ = pick(cfg.attribute_reader, "inception_weights", "")
    return Resolved(feature, feature_dedicated, identity,
                    cfg.identity_kind if identity_dedicated else pipeline.models.identity_kind, identity_dedicated,
                    lpips, cfg.lpips_net or pipeline.models.lpips_net, lpips_dedicated, reader)


def _status(uri: str, dedicated: bool) -> str:
    if marked_random(uri):
        return "RANDOM"
    return "evaluation net" if dedicated else "training-loss net (no separate evaluation net configured)"


def load_instruments(cfg: StudyEvaluationConfig, pipeline: PipelineConfig, root: str,
                     device: torch.device) -> Instruments:
    from fstrain.metrics import load_inception

    where = resolve_instruments(cfg, pipeline, root)
    labels: list[Instrument] = []
    extractor = None
    if where.feature_net:
        extractor = load_inception(where.feature_net, layout=cfg.feature_net_layout,
                                   input_size=cfg.feature_input_size, device=device)
        status = "RANDOM" if extractor.random_init or marked_random(where.feature_net) else (
            "evaluation net" if where.feature_dedicated else "the pipeline's evaluate.inception_weights")
        labels.append(Instrument("FID feature net", where.feature_net, status, extractor.name))
    else:
        labels.append(Instrument("FID feature net", None, "not configured", "FID not computed"))
    lpips = lpips_at(where.lpips, net=where.lpips_net, device=device)
    labels.append(Instrument("perceptual net", where.lpips, _status(where.lpips, where.lpips_dedicated),
                             f"LPIPS-{where.lpips_net}"))
    identity = None
    if where.identity:
        identity = identity_at(where.identity, where.identity_kind, device=device)
        labels.append(Instrument("identity net", where.identity, _status(where.identity, where.identity_dedicated)))
    else:
        labels.append(Instrument("identity net", None, "not configured", "GT identity and retrieval not computed"))
    attributes = None
    if where.attribute_reader:
        attributes = attribute_reader_at(where.attribute_reader, device)
        labels.append(Instrument("attribute reader", where.attribute_reader,
                                 "RANDOM" if attributes.random_init else "evaluation net",
                                 f"attributes: {', '.join(attributes.kinds)}"))
    else:
        labels.append(Instrument("attribute reader", None, "not configured",
                                 "GT attribute error not computed (no evaluation reader in models/models.json and "
                                 "none configured)"))
    return Instruments(extractor=extractor, lpips=lpips, identity=identity, attributes=attributes, labels=labels)


def load_attribute_reader(pipeline: PipelineConfig, root: str, device: torch.device) -> WorldAttributeReader:
    """The evaluation attribute reader alone, found as `load_instruments` finds it (<root>/models/models.json's
    evaluation net), for tools that read attributes and need none of the other instruments."""
    uri = resolve_instruments(StudyEvaluationConfig(feature_net="none"), pipeline, root).attribute_reader
    if not uri:
        raise FileNotFoundError(f"{root}/models has no evaluation attribute reader (models.json): nothing to read "
                                f"attributes with; point the root at a `make demo` or `fstrain.world.pretrain` output")
    return attribute_reader_at(uri, device)


def attribute_reader_at(uri: str, device: torch.device) -> WorldAttributeReader:
    """A world image reader file as an AttributeReader, labelled random when its sidecar says so."""
    return WorldAttributeReader(reader_at(uri, device=device), random_init=marked_random(uri))


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
