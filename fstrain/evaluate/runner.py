"""Compute the paper's table for one run: per style, per mode (baseline, +SC, +PC, +SC&PC):

- FID: Fréchet distance between feature statistics of `num_samples` images G'(z) (fixed z and noise from
  `evaluate.seed`, no truncation, quantised to 8 bits) and of the style dataset `<root>/datasets/<style>/`.
- perceptual distance: mean LPIPS(x, G'(E_w+(x))) over aligned photos x (fstrain.stylize's general mode).
- semantic distance: d_sem(G, G') of `fstrain.metrics.distances` (mean LPIPS + lambda_id (1 - cos ID) between
  G(z) and G'(z) on fixed z with shared noise).
The base G (no fine-tuning) is measured the same way as a reference line. Missing modes become "not trained"
rows; anything that could not be measured is None with a note saying why.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from fstrain import layout
from fstrain.data import storage
from fstrain.metrics import (FeatureExtractor, FeatureStatistics, extract_features, frechet_distance_between,
                             load_inception, semantic_distance, stylization_distance)
from fstrain.metrics.distances import fixed_latents, render_fixed
from fstrain.metrics.features import CONFIG_KEY, INCEPTION_SIZE
from fstrain.models.hub import ModelHub, generator_at, resolve_uri
from fstrain.settings import PipelineConfig
from fstrain.train import resources
from fstrain.evaluate import inputs
from fstrain.evaluate.runs import TRAINED, ModeRun, mode_runs, style_dir

Progress = Callable[[str], None]


@dataclass
class Models:
    """Everything shared by all modes of a style: base G, W+ encoder, LPIPS, identity net, feature extractor."""
    base: nn.Module
    base_uri: str
    base_random: bool
    lpips: nn.Module
    lpips_random: bool
    identity: nn.Module | None
    encoder: nn.Module | None
    extractor: FeatureExtractor | None
    notes: list[str] = field(default_factory=list)


def _sidecar_random(uri: str) -> bool:
    try:
        sidecar = f"{uri}.json"
        return bool(storage.exists(sidecar) and storage.read_json(sidecar).get("random_init"))
    except (storage.StorageError, ValueError):
        return False


def build_extractor(config: PipelineConfig, root: str, device: torch.device) -> tuple[FeatureExtractor | None, str]:
    """The configured Inception (or None when `evaluate.inception_weights` is empty) and a note for the table."""
    cfg = config.evaluate
    if not cfg.inception_weights:
        return None, f"FID not computed: {CONFIG_KEY} is empty (set it to Inception-v3 weights)."
    uri = resolve_uri(cfg.inception_weights, root)
    extractor = load_inception(uri, layout=cfg.inception_layout, input_size=cfg.inception_input_size,
                               sha256=cfg.inception_sha256 or None, device=device)
    return extractor, f"FID features: {extractor.name} from {uri}."


def load_models(config: PipelineConfig, root: str, device: torch.device,
                extractor: FeatureExtractor | None = None) -> Models:
    cfg = config.evaluate
    base = resources.load_base_generator(config.models, root, expected_size=config.data.image_size)
    lpips_uri = resolve_uri(config.models.lpips_backbone, root)
    lpips = resources.load_lpips_metric(config.models, root).to(device)
    identity = resources.load_identity_net(config.models, root).to(device) if cfg.semantic_lambda_id > 0 else None
    encoder = None
    if cfg.photos:
        encoder = ModelHub(config.models, root).encoder("encoder_wplus", device)
    notes = []
    if extractor is None:
        extractor, note = build_extractor(config, root, device)
        notes.append(note)
    else:
        notes.append(f"FID features: {extractor.name}.")
    return Models(base=base.loaded.generator.to(device).eval(), base_uri=base.uri,
                  base_random=bool(base.loaded.metadata.get("random_init")), lpips=lpips,
                  lpips_random=_sidecar_random(lpips_uri), identity=identity, encoder=encoder, extractor=extractor,
                  notes=notes)


def warnings_for(models: Models, config: PipelineConfig) -> list[str]:
    """Loud lines for anything that makes the numbers meaningless or incomparable."""
    out = []
    if models.extractor is not None and models.extractor.random_init:
        out.append("WARNING: FID uses RANDOM feature-extractor weights: the FID column exercises the code and "
                   "measures nothing.")
    if models.extractor is not None and getattr(models.extractor, "input_size", INCEPTION_SIZE) != INCEPTION_SIZE:
        out.append(f"WARNING: Inception input is {models.extractor.input_size} px, not {INCEPTION_SIZE}: FID is "
                   f"not comparable with published values.")
    if models.lpips_random:
        out.append("WARNING: LPIPS uses a RANDOM backbone: perceptual and semantic distances are not perceptual.")
    if models.base_random:
        out.append(f"WARNING: the base generator {models.base_uri} is RANDOM (test model).")
    if models.extractor is not None and config.evaluate.num_samples < 2 * models.extractor.dim:
        out.append(f"Note: {config.evaluate.num_samples} samples for {models.extractor.dim}-d features: the "
                   f"covariance is rank-deficient and FID is biased upwards; use >= 10k samples for reported "
                   f"numbers.")
    return out


@torch.no_grad()
def generated_statistics(g: nn.Module, extractor: FeatureExtractor, num_samples: int, batch_size: int,
                         seed: int) -> FeatureStatistics:
    stats = FeatureStatistics(extractor.dim)
    z_all = fixed_latents(num_samples, g.style_dim, seed)
    for start in range(0, num_samples, batch_size):
        stats.update(extract_features(extractor, render_fixed(g, z_all[start:start + batch_size], start, seed)))
    return stats


@torch.no_grad()
def style_statistics(root: str, style: str, size: int, extractor: FeatureExtractor, batch_size: int,
                     limit: int, device: torch.device) -> tuple[FeatureStatistics, inputs.ImageSet]:
    batches, info = inputs.style_images(root, style, size, batch_size, limit)
    stats = FeatureStatistics(extractor.dim)
    for batch in batches:
        stats.update(extract_features(extractor, batch.to(device)))
    if stats.count < 2:
        raise ValueError(f"{layout.dataset(root, style)}: {stats.count} decodable style image(s); FID "
                         f"needs at least 2")
    return stats, info


def _photo_distance(models: Models, g: nn.Module, config: PipelineConfig, device: torch.device) -> tuple[float, str]:
    from fstrain.stylize import Stylizer
    cfg = config.evaluate
    stylizer = Stylizer(models.encoder, {"g": g})
    batches, info = inputs.photo_batches(cfg.photos, g.size, cfg.num_photos, cfg.batch_size, cfg.seed)
    distance, count = stylization_distance((b.to(device) for b in batches),
                                           lambda x: stylizer.general(stylizer.encode(x), "g"), models.lpips)
    skipped = f", {len(info.skipped)} undecodable skipped" if info.skipped else ""
    return distance, f"{count} {info.description}{skipped}"


def measure(g: nn.Module, models: Models, config: PipelineConfig, real: FeatureStatistics | None,
            device: torch.device, is_base: bool = False) -> dict[str, Any]:
    """FID, perceptual and semantic distance of one generator."""
    cfg = config.evaluate
    row: dict[str, Any] = {"fid": None, "perceptual_distance": None, "semantic_distance": None,
                           "semantic_lpips": None, "semantic_identity": None}
    if models.extractor is not None and real is not None:
        fake = generated_statistics(g, models.extractor, cfg.num_samples, cfg.batch_size, cfg.seed)
        row["fid"] = frechet_distance_between(fake, real)
    if models.encoder is not None:
        row["perceptual_distance"], row["photos"] = _photo_distance(models, g, config, device)
    if is_base:
        row.update(semantic_distance=0.0, semantic_lpips=0.0, semantic_identity=0.0)   # d_sem(G, G) = 0
    else:
        sem = semantic_distance(models.base, g, models.lpips, models.identity, lambda_id=cfg.semantic_lambda_id,
                                num_samples=cfg.num_samples, seed=cfg.seed, batch_size=cfg.batch_size)
        row.update(semantic_distance=sem.total, semantic_lpips=sem.lpips, semantic_identity=sem.identity)
    return row


def evaluate_style(config: PipelineConfig, *, root: str, run_id: str, style: str,
                   device: torch.device | str = "cpu", extractor: FeatureExtractor | None = None,
                   progress: Progress = lambda message: None) -> dict[str, Any]:
    """The evaluation record of one style of a run (see `fstrain.evaluate.report` for its layout)."""
    device = torch.device(device)
    cfg = config.evaluate
    runs: list[ModeRun] = mode_runs(root, run_id, style)
    record: dict[str, Any] = {
        "run_id": run_id, "style": style, "root": root, "style_dir": style_dir(root, run_id, style),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"num_samples": cfg.num_samples, "seed": cfg.seed, "batch_size": cfg.batch_size,
                     "semantic_lambda_id": cfg.semantic_lambda_id, "photos": cfg.photos or None,
                     "num_photos": cfg.num_photos, "fid_real_samples": cfg.fid_real_samples or "all"},
        "rows": [], "reference": None, "notes": [], "warnings": [],
    }
    trained = [run for run in runs if run.status == TRAINED]
    if not trained:
        record["notes"].append(f"No mode of style '{style}' has a final generator under {record['style_dir']}.")
        record["rows"] = [_row(run, None) for run in runs]
        return record

    progress(f"[{style}] loading models")
    models = load_models(config, root, device, extractor)
    record["notes"] += models.notes
    record["warnings"] = warnings_for(models, config)
    record["feature_extractor"] = None if models.extractor is None else {
        "name": models.extractor.name, "dim": models.extractor.dim, "random_init": models.extractor.random_init}

    real = None
    if models.extractor is not None:
        progress(f"[{style}] style-dataset statistics")
        try:
            real, info = style_statistics(root, style, models.base.size, models.extractor, cfg.batch_size,
                                          cfg.fid_real_samples, device)
            skipped = f" ({len(info.skipped)} undecodable skipped: {info.skipped[:3]})" if info.skipped else ""
            record["notes"].append(f"FID reference: {info.used} {info.description}{skipped}; generated: "
                                   f"{cfg.num_samples} images G'(z) per mode (seed {cfg.seed}, no truncation).")
            record["fid_real_count"] = info.used
        except (FileNotFoundError, ValueError) as exc:
            record["notes"].append(f"FID not computed: {exc}")
    if not cfg.photos:
        record["notes"].append("Perceptual distance not computed: evaluate.photos is empty (a folder/prefix of "
                               "aligned photos, or 'synthetic').")

    for run in runs:
        metrics = None
        if run.status == TRAINED:
            progress(f"[{style}] {run.label}: {run.generator}")
            g = generator_at(run.generator, load_discriminator=False).generator.to(device).eval()
            metrics = measure(g, models, config, real, device)
        record["rows"].append(_row(run, metrics))
    progress(f"[{style}] base G (reference)")
    record["reference"] = {"label": "G (base, no fine-tuning)", "generator": models.base_uri,
                           **measure(models.base, models, config, real, device, is_base=True)}
    photos = next((row.get("photos") for row in record["rows"] if row.get("photos")), None)
    if photos:
        record["notes"].append(f"Perceptual distance: mean LPIPS-{config.models.lpips_net}(x, G'(E_w+(x))) over "
                               f"{photos} (general stylization).")
    record["notes"].append(
        f"Semantic distance: mean over {cfg.num_samples} fixed z (seed {cfg.seed}, shared noise) of "
        f"LPIPS(G(z), G'(z)) + {cfg.semantic_lambda_id:g} * (1 - cos(ID(G(z)), ID(G'(z)))); 0 = G' renders as G.")
    return record


def _row(run: ModeRun, metrics: dict[str, Any] | None) -> dict[str, Any]:
    row = {"mode": run.mode, "label": run.label, "status": run.status, "steps": run.steps,
           "generator": run.generator, "fid": None, "perceptual_distance": None, "semantic_distance": None,
           "semantic_lpips": None, "semantic_identity": None}
    if metrics:
        row.update(metrics)
    return row
