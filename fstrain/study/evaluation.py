"""Evaluate one style of one seed of the study on held-out world identities: every row of Table 4, the Toonify
layer swaps, the pair-level variants and the base G, with the evaluation instruments (fstrain.study.instruments).

The test set: identities f..f+n-1 of `fstrain.world.splits.HELDOUT` (a world seed no network and no style dataset
is drawn from; f = `first_identity`, 0 for the published study, another block for a validation run), each rendered in view `test_view` as a photo (the input x_i) and in the style (the ground truth
y_i: the same person, same view, in the target style). FID's reference set: HELDOUT identities f+n..f+n+m-1 rendered
in the style. For a generator G' and E = the pipeline's W+ encoder, with out_i = G'(E(x_i)) (general mode, stored
noise):
- fid             Fréchet distance of feature statistics of {out_i} vs the style renders (FID feature net)
- perceptual      mean LPIPS(x_i, out_i)                                        (as fstrain.evaluate defines it)
- semantic        d_sem(G, G') of fstrain.metrics.distances, fixed z, LPIPS + lambda_id (1 - cos ID)
- gt_perceptual   mean LPIPS(out_i, y_i)       (the pipeline's LPIPS unless evaluation.lpips_backbone names another)
- gt_features     mean 1 - cos(F(out_i), F(y_i)), F the FID feature net's pooled features: a GT distance read by
                  an evaluation net that no fine-tune was trained against (the world's LPIPS is a training loss)
- gt_identity     mean 1 - cos(ID(out_i), ID(y_i))
- gt_attribute    attribute-reader error of out_i against the reader on y_i (fstrain.study.instruments)
- retrieval_top1  fraction of i whose nearest true render (cosine, identity net) among all y_j is y_i
- diversity       how different the outputs are from each other, relative to the truths: mean 1 - cos(F(out_i),
                  F(out_j)) over pairs i != j, divided by the same over the y_i (F: the FID feature net). 1 = as
                  varied as the true renders; a G' that collapsed to one picture for everyone reads near 0, which
                  FID on 100 images and GT perceptual distance can miss (docs/study/recipe_probe.md, fantasy)
- seconds_per_image  encode + render time per test image on this machine (batch `batch_size`)
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fstrain.data import storage
from fstrain.losses import identity_distance, perceptual_distance
from fstrain.metrics import FeatureStatistics, extract_features, frechet_distance_between, semantic_distance
from fstrain.study.instruments import Instruments, attribute_error
from fstrain.stylize.images import encode_png, to_uint8
from fstrain.stylize.refine import encode_in_batches

METRICS = ("fid", "perceptual", "semantic", "gt_perceptual", "gt_features", "gt_identity", "gt_attribute",
           "retrieval_top1", "diversity")


@dataclass(frozen=True)
class TestSet:
    """Which held-out identities and view; `fingerprint` changes whenever the images would."""
    style: str
    size: int
    identities: int
    view: int
    fid_reference_identities: int
    first_identity: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def of_study(cls, study: Any, style: str, size: int) -> "TestSet":
        """The test block a study config (fstrain.study.settings.StudyConfig) names, for one style and size."""
        return cls(style=style, size=size, identities=study.test_identities, view=study.test_view,
                   fid_reference_identities=study.fid_reference_identities, first_identity=study.first_test_identity)


@dataclass
class TestImages:
    photos: torch.Tensor          # (n, 3, s, s) in [-1, 1]
    truths: torch.Tensor          # (n, 3, s, s): the same identities and view in the style
    reference: torch.Tensor       # (m, 3, s, s): other held-out identities in the style (FID's set)
    identity_ids: list[str]


def render_test_images(test: TestSet) -> TestImages:
    from fstrain.world.splits import HELDOUT, render_batch

    ids = list(range(test.first_identity, test.first_identity + test.identities))
    photos = render_batch(HELDOUT, ids, [test.view] * len(ids), "photo", test.size)
    truths = render_batch(HELDOUT, ids, [test.view] * len(ids), test.style, test.size)
    ref_ids = list(range(ids[-1] + 1, ids[-1] + 1 + test.fid_reference_identities))
    reference = render_batch(HELDOUT, ref_ids, [test.view] * len(ref_ids), test.style, test.size)
    return TestImages(photos.tensor(), truths.tensor(), reference.tensor(),
                      [identity.identity_id for identity in photos.identities])


def _batches(x: torch.Tensor, size: int):
    for start in range(0, x.shape[0], size):
        yield x[start:start + size]


@torch.no_grad()
def render_codes(g: nn.Module, codes: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """G'(w+) for every code (general mode, stored noise), clamped to [-1, 1], on the CPU."""
    return torch.cat([g.synthesis(batch.to(device), randomize_noise=False).clamp(-1, 1).cpu()
                      for batch in _batches(codes, batch_size)])


@torch.no_grad()
def stylize_all(encoder: nn.Module, g: nn.Module, photos: torch.Tensor, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, float]:
    """G'(E(x)) for every photo (general mode, stored noise) and the seconds per image it took."""
    started = time.perf_counter()
    codes = encode_in_batches(encoder, photos, batch_size)
    outputs = render_codes(g, codes, batch_size, device)
    return outputs, (time.perf_counter() - started) / photos.shape[0]


@torch.no_grad()
def _mean_lpips(lpips: nn.Module, a: torch.Tensor, b: torch.Tensor, batch_size: int, device) -> float:
    values = [perceptual_distance(lpips, x.to(device), y.to(device)).reshape(-1).double().cpu()
              for x, y in zip(_batches(a, batch_size), _batches(b, batch_size))]
    return float(torch.cat(values).mean())


@torch.no_grad()
def _embed(net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """net(images) batch by batch on `device`, as one float32 CPU tensor (identity embeddings, feature vectors)."""
    return torch.cat([net(x.to(device)).float().cpu() for x in _batches(images, batch_size)])


def image_features(extractor, images: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """The FID feature net's pooled features of `images`: FID's statistics and gt_features both read these."""
    return _embed(functools.partial(extract_features, extractor), images, batch_size, device)


def feature_statistics(features: torch.Tensor) -> FeatureStatistics:
    return FeatureStatistics(features.shape[1]).update(features)


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean 1 - cos over all pairs i != j of the rows of `features` (n >= 2)."""
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    n = unit.shape[0]
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images; got {n}")
    similarity = unit @ unit.T
    return float((n * n - similarity.sum()) / (n * (n - 1)))     # the diagonal's n ones drop out of n*n - sum


def diversity_ratio(output_features: torch.Tensor, truth_features: torch.Tensor) -> float:
    """The `diversity` metric (module docstring): the outputs' mean pairwise feature distance over the truths'."""
    return mean_pairwise_distance(output_features) / mean_pairwise_distance(truth_features)


def retrieval_top1(out_embeddings: torch.Tensor, truth_embeddings: torch.Tensor) -> float:
    """Fraction of outputs whose most similar true render (cosine) is their own identity's."""
    a = torch.nn.functional.normalize(out_embeddings, dim=1)
    b = torch.nn.functional.normalize(truth_embeddings, dim=1)
    nearest = (a @ b.T).argmax(1)
    return float((nearest == torch.arange(a.shape[0])).float().mean())


@torch.no_grad()
def measure_generator(g: nn.Module, *, base: nn.Module, encoder: nn.Module, images: TestImages,
                      instruments: Instruments, reference_stats: FeatureStatistics | None, lambda_id: float,
                      semantic_samples: int, seed: int, batch_size: int, device: torch.device,
                      is_base: bool = False, truth_features: torch.Tensor | None = None
                      ) -> tuple[dict[str, Any], torch.Tensor]:
    """Every metric of one generator (module docstring) and its stylized test photos. `truth_features`: the
    feature net's features of images.truths, when the caller measures several generators against them."""
    outputs, seconds = stylize_all(encoder, g, images.photos, batch_size, device)
    row: dict[str, Any] = {m: None for m in METRICS}
    row["seconds_per_image"] = seconds
    output_features = None
    if instruments.extractor is not None:
        output_features = image_features(instruments.extractor, outputs, batch_size, device)
        if reference_stats is not None:
            row["fid"] = frechet_distance_between(feature_statistics(output_features), reference_stats)
    row["perceptual"] = _mean_lpips(instruments.lpips, images.photos, outputs, batch_size, device)
    if is_base:
        row["semantic"] = 0.0    # d_sem(G, G) = 0 by definition
    else:
        row["semantic"] = semantic_distance(base, g, instruments.lpips, instruments.identity, lambda_id=lambda_id,
                                            num_samples=semantic_samples, seed=seed, batch_size=batch_size).total
    row.update(ground_truth_fidelity(outputs, images.truths, instruments, batch_size, device,
                                     output_features=output_features, truth_features=truth_features))
    return row, outputs


@torch.no_grad()
def ground_truth_fidelity(outputs: torch.Tensor, truths: torch.Tensor, instruments: Instruments, batch_size: int,
                          device: torch.device, output_features: torch.Tensor | None = None,
                          truth_features: torch.Tensor | None = None) -> dict[str, Any]:
    """How close each stylized photo is to the world's render of the same person in the style: gt_perceptual,
    and where the instruments have the nets, gt_features, diversity, gt_identity, retrieval_top1 and gt_attribute
    (None otherwise). Feature-net features already extracted (`image_features`) are reused, not extracted again."""
    row: dict[str, Any] = {"gt_perceptual": _mean_lpips(instruments.lpips, outputs, truths, batch_size, device),
                           "gt_features": None, "gt_identity": None, "retrieval_top1": None, "gt_attribute": None,
                           "diversity": None}
    if instruments.extractor is not None:
        if output_features is None:
            output_features = image_features(instruments.extractor, outputs, batch_size, device)
        if truth_features is None:
            truth_features = image_features(instruments.extractor, truths, batch_size, device)
        row["gt_features"] = float(identity_distance(output_features, truth_features).double().mean())
        if outputs.shape[0] > 1:
            row["diversity"] = diversity_ratio(output_features, truth_features)
    if instruments.identity is not None:
        out_emb = _embed(instruments.identity, outputs, batch_size, device)
        truth_emb = _embed(instruments.identity, truths, batch_size, device)
        row["gt_identity"] = float(identity_distance(out_emb, truth_emb).double().mean())
        row["retrieval_top1"] = retrieval_top1(out_emb, truth_emb)
    if instruments.attributes is not None:
        errors = attribute_error(instruments.attributes, outputs.to(device), truths.to(device))
        row["gt_attribute"] = errors["mean"]
        row["gt_attribute_per_attribute"] = errors
    return row


def parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def write_strip(uri: str, images: torch.Tensor) -> str:
    """The first images side by side as one PNG (a row of the report's picture grid)."""
    pixels = to_uint8(images)
    storage.write_bytes(uri, encode_png(np.concatenate(list(pixels), axis=1)))
    return uri


def evaluate_rows(rows: dict[str, Callable[[], nn.Module]], *, base: nn.Module, encoder: nn.Module,
                  images: TestImages, instruments: Instruments, lambda_id: float, semantic_samples: int,
                  seed: int, batch_size: int, device: torch.device, strips_uri: str, grid_identities: int,
                  progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Measure each named generator (built lazily, one in memory at a time) plus the base G; write grid strips."""
    reference_stats = truth_features = None
    if instruments.extractor is not None:
        reference_stats = feature_statistics(image_features(instruments.extractor, images.reference, batch_size,
                                                            device))
        truth_features = image_features(instruments.extractor, images.truths, batch_size, device)
    shown = min(grid_identities, images.photos.shape[0])
    strips = {"photo": write_strip(storage.join(strips_uri, "photo.png"), images.photos[:shown]),
              "ground truth": write_strip(storage.join(strips_uri, "ground_truth.png"), images.truths[:shown])}
    results: dict[str, Any] = {}
    for name, build in [("base G", lambda: base), *rows.items()]:
        progress(f"measuring {name}")
        g = build().to(device).eval()
        metrics, outputs = measure_generator(g, base=base, encoder=encoder, images=images, instruments=instruments,
                                             reference_stats=reference_stats, lambda_id=lambda_id,
                                             semantic_samples=semantic_samples, seed=seed, batch_size=batch_size,
                                             device=device, is_base=name == "base G",
                                             truth_features=truth_features)
        metrics["parameters"] = parameter_count(g)
        metrics["resolution"] = int(g.size)
        results[name] = metrics
        strips[name] = write_strip(storage.join(strips_uri, f"{_safe(name)}.png"), outputs[:shown])
    return {"rows": results, "strips": strips, "grid_identities": images.identity_ids[:shown]}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
