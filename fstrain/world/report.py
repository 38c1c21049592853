"""The instrument report: every world instrument measured on HELDOUT identities (never trained on), each next to
a random-weights row of the same architecture, written as `instruments.json` and `instruments.md`.

Every trained file is read back through the project's own loaders (load_generator, load_encoder, load_identity,
load_lpips, load_inception), so the figures are those of the shipped (fp16 where stored so) weights.

- G: in-world FID (evaluation feature net) of `fid_samples` samples G(z) (fixed z and noise, as fstrain.evaluate
  draws them) against as many held-out photos; the same for a random G of the same architecture and, when given,
  the 32 px autoencoder warm start (its samples upsampled by the feature net's own resize); a sample grid.
- E_w+: LPIPS (the world perceptual net) and cosine similarity under the *evaluation* identity net between held-out
  photos x and G(E_w+(x)), and which attributes the evaluation reader still reads off G(E_w+(x)) (glasses kept /
  not added, hair style kept; the photos' own row is the reader's ceiling); random row = an untrained encoder of
  the same architecture with the same G.
- identity nets: 1:1 verification accuracy and TAR@FAR=1e-3 on held-out photo pairs (and chance: random
  embeddings).
- perceptual net: 2AFC agreement with the world's parameter-distance labels on held-out triplets, for random,
  trained-with-uniform-heads and trained-with-calibrated-heads nets, and pixel L2.
- attribute reader: per domain, accuracy of hair style / glasses / bangs / eye colour, face-shape error and
  colour errors as fractions of the colour's range.
- evaluation feature net: FID between two disjoint held-out photo sets (should be small) and between held-out
  photos and each style domain (should be large), trained vs random.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fstrain.data.synthetic import DOMAINS
from fstrain.metrics import FeatureStatistics, extract_features, frechet_distance_between
from fstrain.metrics.distances import fixed_latents, render_fixed
from fstrain.stylize.images import image_grid, to_uint8
from fstrain.world.reader import read_attributes
from fstrain.world.splits import WorldBatch

Log = Callable[[str], None]


def statistics(extractor: Any, images: torch.Tensor, batch_size: int = 200) -> FeatureStatistics:
    stats = FeatureStatistics(extractor.dim)
    for i in range(0, len(images), batch_size):
        stats.update(extract_features(extractor, images[i:i + batch_size]))
    return stats


@torch.no_grad()
def generator_samples(g: nn.Module, count: int, seed: int, batch_size: int = 100) -> torch.Tensor:
    z = fixed_latents(count, g.style_dim, seed)
    return torch.cat([render_fixed(g, z[i:i + batch_size], i, seed) for i in range(0, count, batch_size)]).clamp(-1, 1)


def significant(value: float) -> float:
    """4 significant digits, not decimals: a random net's features are tiny and its FIDs all rounded to 0."""
    return float(f"{value:.4g}")


def fid(extractor: Any, images: torch.Tensor, reference: FeatureStatistics) -> float:
    return significant(frechet_distance_between(statistics(extractor, images), reference))


def sample_grid(samples: torch.Tensor, columns: int = 8) -> Any:
    cells = list(to_uint8(samples))
    return image_grid([cells[i:i + columns] for i in range(0, len(cells), columns)], pad=1)


@torch.no_grad()
def encoder_scores(encoder: nn.Module, g: nn.Module, photos: torch.Tensor, lpips: nn.Module,
                   identity: nn.Module, reader: nn.Module | None = None,
                   truth: dict[str, torch.Tensor] | None = None,
                   batch_size: int = 100) -> dict[str, float | int | None]:
    """Mean LPIPS and identity cosine between photos x and G.synthesis(E_w+(x)); with an attribute `reader` and the
    photos' `truth` (fstrain.world.reading.batch_targets), also which of the person's attributes the
    reconstruction still shows (`attributes_kept`): what the base G can carry into any stylization."""
    distances, cosines, reconstructions = [], [], []
    for i in range(0, len(photos), batch_size):
        x = photos[i:i + batch_size]
        y = g.synthesis(encoder(x)).clamp(-1, 1)
        distances.append(lpips(x, y).reshape(-1))
        cosines.append(torch.nn.functional.cosine_similarity(identity(x), identity(y), dim=1))
        reconstructions.append(y)
    d, c = torch.cat(distances), torch.cat(cosines)
    out: dict[str, float | int | None] = {
        "lpips": round(float(d.mean()), 4), "identity_cosine_mean": round(float(c.mean()), 4),
        "identity_cosine_min": round(float(c.min()), 4), "photos": int(len(photos))}
    if reader is not None and truth is not None:
        out.update(attributes_kept(read_attributes(reader, torch.cat(reconstructions), batch_size), truth))
    return out


def attributes_kept(predicted: dict[str, torch.Tensor],
                    truth: dict[str, torch.Tensor]) -> dict[str, float | int | None]:
    """From a reader's outputs on reconstructions: the share of glasses wearers still read as wearing glasses, of
    the others read as wearing none, and of all read with their true hair style."""
    glasses = predicted["glasses"].argmax(1)
    wearers = truth["glasses"] == 1
    return {"glasses_kept": round(float((glasses[wearers] == 1).double().mean()), 4) if wearers.any() else None,
            "glasses_not_added": round(float((glasses[~wearers] == 0).double().mean()), 4)
            if (~wearers).any() else None,
            "hair_style_kept": round(float((predicted["hair_style"].argmax(1) == truth["hair_style"])
                                           .double().mean()), 4),
            "glasses_wearers": int(wearers.sum())}


def domain_fids(extractor: Any, photos_a: torch.Tensor, photos_b: torch.Tensor,
                styles: dict[str, torch.Tensor]) -> dict[str, float]:
    """FID of other photos and of each style's images against `photos_a`, and the nearest style's FID over the
    photos' (free of the features' scale, so a random net's row compares with a trained one's)."""
    reference = statistics(extractor, photos_a)
    out = {"photo_vs_photo": fid(extractor, photos_b, reference)}
    for domain, images in styles.items():
        out[f"photo_vs_{domain}"] = fid(extractor, images, reference)
    nearest_style = min(v for k, v in out.items() if k != "photo_vs_photo")
    out["nearest_style_over_photo"] = significant(nearest_style / max(out["photo_vs_photo"], 1e-12))
    return out


def split_domains(batch: WorldBatch) -> dict[str, torch.Tensor]:
    images = batch.tensor()
    domains = np.asarray(batch.domain)
    return {d: images[torch.from_numpy(np.flatnonzero(domains == d))] for d in DOMAINS if (domains == d).any()}


# ---------------------------------------------------------------- writing


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def made_by(stage: str, reruns: list[dict[str, Any]]) -> str:
    """Which command last trained `stage`: the last rerun that named it, else the full run."""
    last = max((i for i, r in enumerate(reruns, 1) if stage in r["stages"]), default=0)
    return f"rerun {last}" if last else "full run"


def markdown(report: dict[str, Any]) -> str:
    lines = ["# World instruments: validation on held-out identities", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             f"Seed: {report['seed']}, size: {report['size']} px, time {report['total_seconds']} s "
             f"(budget {report['budget_seconds']} s)" + ("  " if report.get("reruns") else ""),
             *[f"Rerun: `{r['command']}` (stages {', '.join(r['stages'])}; {r['seconds']} s"
               + (f" of a {r['budget_seconds']:.0f} s budget" if "budget_seconds" in r else "") + f"; {r['machine']})  "
               for r in report.get("reruns", [])],
             "", "## Time per instrument", "",
             "| stage | seconds | made by | note |", "|---|---|---|---|"]
    for stage, info in report["stages"].items():
        lines.append(f"| {stage} | {_fmt(info.get('seconds'))} | {made_by(stage, report.get('reruns', []))} | "
                     f"{info.get('note', '')} |")
    for title, table in report["tables"].items():
        lines += ["", f"## {title}", ""]
        if isinstance(table, str):
            lines.append(table)
            continue
        columns = list(dict.fromkeys(k for row in table.values() for k in row))
        lines += ["| row | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, row in table.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    lines += ["", "## Done-when checks", ""]
    for check in report["checks"]:
        lines.append(f"- [{'x' if check['met'] else ' '}] {check['what']}: {check['measured']}")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    (out / "instruments.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "instruments.md").write_text(markdown(report))
