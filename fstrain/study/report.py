"""The study's report: Table 4 per style, Table 1 (ours vs Toonify vs baseline), the pair-level table, Table 3,
bar charts with error bars and a picture grid per style, written to `<out>/study.md`, `study.json`, `*.png`.

Every cell is mean ± std over seeds (sample std). An ordering between two rows is claimed only with at least two
seeds and only where the intervals mean ± std do not overlap; everything else is "not separable". The paper's
numbers (FORMATS.md) sit beside ours, and the text says row by row where the paper's ordering reproduces.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from typing import Any, Sequence

import numpy as np
from PIL import Image

from fstrain.config import config_to_dict
from fstrain.data import storage
from fstrain.data.images import decode_pixels
from fstrain.study.charts import bar_chart
from fstrain.study.evaluation import METRICS
from fstrain.stylize.images import image_grid, png_bytes

ROWS = ("baseline", "sc", "pc", "sc+pc")
ROW_LABELS = {"baseline": "baseline", "sc": "+SC", "pc": "+PC", "sc+pc": "+SC&PC", "base G": "G (no fine-tuning)"}
METRIC_TITLES = {"fid": "FID", "perceptual": "perceptual", "semantic": "semantic", "gt_perceptual": "GT perceptual",
                 "gt_features": "GT eval-features", "gt_identity": "GT identity", "gt_attribute": "GT attribute err",
                 "retrieval_top1": "retrieval top-1", "diversity": "diversity"}
# diversity: the outputs' spread over the truths' (1 = as varied); below 1 is the usual case and low means collapse
HIGHER_IS_BETTER = {"retrieval_top1", "diversity"}
GRID_CELL = 112    # px per picture-grid cell at least, so column labels fit

# The paper's reported results (../shared/FORMATS.md): Table 4 (FID, semantic distance) and Table 1.
PAPER_TABLE4 = {
    "cartoon": {"baseline": (169.54, 0.570), "sc": (153.72, 0.492), "pc": (151.65, 0.477), "sc+pc": (150.24, 0.413)},
    "anime": {"baseline": (149.63, 0.648), "sc": (134.33, 0.603), "pc": (115.62, 0.582), "sc+pc": (99.13, 0.559)},
    "fantasy": {"baseline": (149.57, 0.613), "sc": (138.52, 0.586), "pc": (118.68, 0.537), "sc+pc": (110.25, 0.489)},
    "illustration": {"baseline": (115.64, 0.617), "sc": (98.17, 0.591), "pc": (94.57, 0.540),
                     "sc+pc": (56.17, 0.491)},
    "impasto": {"baseline": (134.19, 0.549), "sc": (123.51, 0.513), "pc": (106.12, 0.484), "sc+pc": (102.95, 0.428)},
}
PAPER_TABLE1 = {   # FID / perceptual distance
    "cartoon": {"Toonify": (166.57, 0.478), "ours": (150.24, 0.413)},
    "illustration": {"Toonify": (97.02, 0.541), "ours": (56.17, 0.491)},
    "anime": {"Toonify": (135.43, 0.587), "ours": (99.13, 0.559)},
}
PAPER_TABLE3 = "ours 87.00 M parameters, 1024 px, 0.09 s per image, 0.5 h training per style; Toonify 28.27 M"


# ---------------------------------------------------------------- numbers


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not present:
        return {"mean": None, "std": None, "n": 0, "values": list(values)}
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return {"mean": float(np.mean(present)), "std": std, "n": len(present), "values": present}


def aggregate(evaluations: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """style -> row -> metric -> {mean, std, n, values} over the seeds' evaluations."""
    values: dict[str, dict[str, dict[str, list]]] = {}
    for record in evaluations:
        for row, metrics in record["rows"].items():
            for metric in (*METRICS, "seconds_per_image", "parameters", "resolution"):
                values.setdefault(record["style"], {}).setdefault(row, {}).setdefault(metric, []).append(
                    metrics.get(metric))
    return {style: {row: {m: mean_std(v) for m, v in metrics.items()} for row, metrics in rows.items()}
            for style, rows in values.items()}


def compare(a: dict, b: dict, metric: str) -> str:
    """'better' / 'worse' when row a's interval lies wholly on the good / bad side of row b's, else 'not separable'.
    Needs two or more seeds on both sides."""
    if a["mean"] is None or b["mean"] is None:
        return "n/a"
    if a["n"] < 2 or b["n"] < 2:
        return "one seed: no claim"
    a_lo, a_hi = a["mean"] - a["std"], a["mean"] + a["std"]
    b_lo, b_hi = b["mean"] - b["std"], b["mean"] + b["std"]
    if a_hi < b_lo:
        return "worse" if metric in HIGHER_IS_BETTER else "better"
    if a_lo > b_hi:
        return "better" if metric in HIGHER_IS_BETTER else "worse"
    return "not separable"


def fmt(cell: dict | None, digits: int = 3) -> str:
    if not cell or cell.get("mean") is None:
        return "n/a"
    text = f"{cell['mean']:.{digits}f}"
    return text + (f" ± {cell['std']:.{digits}f}" if cell["n"] > 1 else "")


def _toonify_rows(rows: dict) -> list[str]:
    """Toonify rows by direction, then swap resolution (numerically)."""
    return sorted((r for r in rows if r.startswith("toonify:")),
                  key=lambda r: (r.rsplit("@", 1)[0], int(r.rsplit("@", 1)[1])))


def toonify_label(row: str) -> str:
    from fstrain.stylize.layer_swap import DIRECTION_LABELS
    direction, _, resolution = row[len("toonify:"):].partition("@")
    return f"{DIRECTION_LABELS.get(direction, direction)} @ {resolution} px"


def best_toonify(rows: dict, metric: str = "gt_perceptual") -> str | None:
    candidates = [(rows[r][metric]["mean"], r) for r in _toonify_rows(rows) if rows[r][metric]["mean"] is not None]
    return min(candidates)[1] if candidates else None


def paper_ordering_check(stats: dict) -> list[dict]:
    """Per style and metric: does the mean order of baseline, +SC, +PC, +SC&PC improve monotonically as the paper's
    Table 4 does, and which of the adjacent steps (and baseline → +SC&PC) are separable."""
    out = []
    for style, rows in stats.items():
        if not all(r in rows for r in ROWS):
            continue
        for metric in METRICS:
            means = [rows[r][metric]["mean"] for r in ROWS]
            if any(m is None for m in means):
                continue
            sign = -1 if metric in HIGHER_IS_BETTER else 1
            monotone = all(sign * means[i + 1] < sign * means[i] for i in range(3))
            steps = {f"{ROWS[i]}→{ROWS[i + 1]}": compare(rows[ROWS[i + 1]][metric], rows[ROWS[i]][metric], metric)
                     for i in range(3)}
            headline = compare(rows["sc+pc"][metric], rows["baseline"][metric], metric)
            out.append({"style": style, "metric": metric, "means": dict(zip(ROWS, means)),
                        "paper_order_in_means": monotone, "steps": steps, "sc+pc_vs_baseline": headline})
    return out


# ---------------------------------------------------------------- pictures


def _strip_cells(uri: str, count: int) -> list[np.ndarray]:
    pixels = decode_pixels(storage.read_bytes(uri), uri)
    side = pixels.shape[0]
    return [pixels[:, i * side:(i + 1) * side] for i in range(min(count, pixels.shape[1] // side))]


def picture_grid(record: dict, toonify_rows: Sequence[str]) -> tuple[Image.Image, list[str]]:
    """Rows = test identities; columns photo | ground truth | baseline | +SC | +PC | +SC&PC | Toonify swaps."""
    columns = ["photo", "ground truth", *ROWS, *toonify_rows]
    labels = ["photo", "ground truth", "baseline", "+SC", "+PC", "+SC&PC",
              *[f"Toonify low:{'G' if 'from_base' in r else 'G*'} @{r.rsplit('@', 1)[-1]}" for r in toonify_rows]]
    n = len(record["grid_identities"])
    strips = [_strip_cells(record["strips"][c], n) for c in columns]
    side = strips[0][0].shape[0]
    scale = max(1, -(-GRID_CELL // side))     # small renders enlarged by a whole factor (pixels stay pixels)
    cells = [[np.kron(strip[i], np.ones((scale, scale, 1), np.uint8)) for strip in strips] for i in range(n)]
    return image_grid(cells, column_labels=labels), columns


# ---------------------------------------------------------------- the report


def git_commit() -> str:
    """HEAD of the checkout this code runs from, '+modified' when its tracked files differ (read at the study's
    start: commits landing during a long run must not be credited with it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=here, timeout=30).returncode == 1
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+modified" if dirty else "")) if head else "unknown"


def _machine() -> str:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def table3(stats: dict, cells: dict, evaluations: list[dict]) -> dict[str, dict]:
    """Per style: parameters, resolution, training time (sum of the fine-tune cells each method needs, mean over
    seeds) and stylization time per image (E_w+ + G', this machine)."""
    out = {}
    encoder_params = next((e["encoder_parameters"] for e in evaluations), None)
    for style, rows in stats.items():
        def train_s(stages: Sequence[str]) -> dict:
            per_seed = {}
            for key, cell in cells.items():
                seed, cell_style, stage = key.split("/", 2)
                if cell_style == style and stage in stages and cell.get("run_s") is not None:
                    per_seed[seed] = per_seed.get(seed, 0.0) + cell["run_s"]
            return mean_std(list(per_seed.values()))

        ours, toonify = rows.get("sc+pc", {}), rows.get(best_toonify(rows) or "", {})
        out[style] = {
            "ours": {"generator_parameters": ours.get("parameters", {}).get("mean"),
                     "encoder_parameters": encoder_params, "resolution": ours.get("resolution", {}).get("mean"),
                     "training_s": train_s(("baseline", "pairs", "sc+pc")),
                     "seconds_per_image": ours.get("seconds_per_image")},
            "Toonify": {"generator_parameters": toonify.get("parameters", {}).get("mean"),
                        "encoder_parameters": encoder_params,
                        "resolution": toonify.get("resolution", {}).get("mean"),
                        "training_s": train_s(("baseline",)), "seconds_per_image": toonify.get("seconds_per_image")},
        }
    return out


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{int(round(value)):,}"


def markdown(record: dict) -> str:
    stats, lines = record["aggregate"], []
    lines += [f"# Method study: {record['study']['name']}", "",
              f"- command: `{record['command']}`", f"- commit: `{record['commit']}`",
              f"- machine: {record['machine']}", f"- wall time of this invocation: {record['wall_s']:.0f} s (cells already done are reused); compute in "
              f"all cells (sum of task run times, parallel tasks overlap): {record['compute_s']:.0f} s",
              f"- seeds: {record['seeds']}; styles: {', '.join(record['styles'])}; created {record['created']}",
              f"- test set: {record['test_set']}", f"- FID reference: {record['fid_reference']}"]
    if record["quick"]:
        lines.append("- **QUICK RUN** (`--quick`): one seed, few steps, few identities: the numbers exercise the "
                     "study; they are not the study's result.")
    lines += ["", "## Instruments", ""]
    lines += [f"- {'**' if i['status'] == 'RANDOM' else ''}{i['label']}{'**' if i['status'] == 'RANDOM' else ''}"
              for i in record["instruments"]]
    if any(i["status"] == "RANDOM" for i in record["instruments"]):
        lines.append("- **WARNING: at least one instrument has RANDOM weights: the columns it measures exercise the "
                     "code and measure nothing.**")
    lines += ["", "Metrics (fstrain.study.evaluation): FID of G'(E(photo)) vs the style's renders; perceptual = "
              "LPIPS(photo, G'(E(photo))); semantic = d_sem(G, G'); GT perceptual = LPIPS(G'(E(photo_i)), truth_i); "
              "GT eval-features = 1 - cos of the FID feature net's features of G'(E(photo_i)) and truth_i (an "
              "evaluation net, unlike the LPIPS the fine-tunes trained with); GT identity = 1 - cos ID; "
              "GT attribute = attribute-reader error vs its reading of the truth; retrieval "
              "top-1 = truth_i is the nearest truth (higher is better; all others lower is better). Cells: mean ± std "
              "over seeds.", ""]
    header = "| row | " + " | ".join(METRIC_TITLES[m] for m in METRICS) + " |"
    rule = "|---|" + "---:|" * len(METRICS)
    for style in record["styles"]:
        rows = stats.get(style)
        if not rows:
            lines += [f"## {style}", "", "not evaluated (see failed cells)", ""]
            continue
        lines += [f"## {style}: Table 4", "", header, rule]
        for row in [*ROWS, *_toonify_rows(rows), "base G"]:
            if row in rows:
                label = toonify_label(row) if row.startswith("toonify:") else ROW_LABELS[row]
                lines.append(f"| {label} | " + " | ".join(fmt(rows[row][m]) for m in METRICS) + " |")
        paper = PAPER_TABLE4.get(style)
        if paper:
            lines += ["", "Paper (FID / semantic): " + "; ".join(f"{ROW_LABELS[r]} {paper[r][0]:.2f} / "
                                                                 f"{paper[r][1]:.3f}" for r in ROWS)]
        levels = sorted(r for r in rows if r.startswith("sc+pc@"))
        if levels and record["study"]["pair_levels"]:
            lines += ["", f"Pair level (SC&PC trained on level-L pairs; default level "
                          f"{record['default_pair_level'].get(style)}):", "", header, rule]
            for row in levels:
                lines.append(f"| level {row.split('@')[1]} | " + " | ".join(fmt(rows[row][m]) for m in METRICS) + " |")
            best = record["best_pair_level"].get(style)
            if best:
                lines.append(f"\nBest level by GT perceptual distance (means): {best['level']} ({best['claim']}).")
        lines += ["", f"![{style} grid]({style}_grid.png)", ""]
    lines += ["## Table 1: ours (+SC&PC) vs Toonify vs baseline", "",
              "| style | row | FID | perceptual | GT perceptual | retrieval top-1 | paper FID / perceptual |",
              "|---|---|---:|---:|---:|---:|---|"]
    for style in record["styles"]:
        rows = stats.get(style, {})
        toon = best_toonify(rows)
        for name, row in (("ours", "sc+pc"), ("Toonify", toon), ("baseline", "baseline")):
            if row and row in rows:
                paper = PAPER_TABLE1.get(style, {}).get(name)
                label = toonify_label(row) if name == "Toonify" else name
                lines.append(f"| {style} | {label} | {fmt(rows[row]['fid'])} | {fmt(rows[row]['perceptual'])} | "
                             f"{fmt(rows[row]['gt_perceptual'])} | {fmt(rows[row]['retrieval_top1'])} | "
                             f"{'' if not paper else f'{paper[0]:.2f} / {paper[1]:.3f}'} |")
    lines += ["", "Toonify: the swap (of every resolution and direction measured) with the lowest GT perceptual "
              "distance; every swap is in the per-style tables.", "",
              "## Table 3: cost", "", "| style | method | G' parameters | E_w+ parameters | resolution | "
              "training (s) | stylization (s / image) |", "|---|---|---:|---:|---:|---:|---:|"]
    for style, methods in record["table3"].items():
        for name, row in methods.items():
            lines.append(f"| {style} | {name} | {_count(row['generator_parameters'])} | "
                         f"{_count(row['encoder_parameters'])} | {_count(row['resolution'])} | "
                         f"{fmt(row['training_s'], 1)} | {fmt(row['seconds_per_image'], 4)} |")
    lines += ["", f"Paper: {PAPER_TABLE3}.", "", "## Does the paper's ordering reproduce?", ""]
    lines += [f"- {line}" for line in record["verdict"]]
    lines += ["", "## Figures", ""] + [f"![{m}]({m}.png)" for m in record["figures"]]
    failed = {k: c for k, c in record["cells"].items() if c["status"] in ("failed", "not run")}
    if failed:
        lines += ["", "## Cells that failed or did not run", ""]
        lines += [f"- {k}: {c['status']}: {c['error']}" for k, c in failed.items()]
    return "\n".join(lines) + "\n"


def verdict(checks: list[dict], stats: dict, seeds: int) -> list[str]:
    """Plain sentences: per style, where the paper's ordering reproduces and where it does not."""
    out = []
    if seeds < 2:
        out.append(f"Only {seeds} seed: no ordering is claimed (an interval needs two or more seeds).")
    for check in checks:
        metric = METRIC_TITLES[check["metric"]]
        order = "follow" if check["paper_order_in_means"] else "do NOT follow"
        out.append(f"{check['style']}, {metric}: the means {order} the paper's order baseline > +SC > +PC > +SC&PC; "
                   f"+SC&PC vs baseline: {check['sc+pc_vs_baseline']}; steps: "
                   + ", ".join(f"{k} {v}" for k, v in check["steps"].items()) + ".")
    for style, rows in stats.items():
        toonify = best_toonify(rows)
        if toonify and "sc+pc" in rows:
            parts = [f"{METRIC_TITLES[m]} {compare(rows['sc+pc'][m], rows[toonify][m], m)}"
                     for m in ("fid", "perceptual", "gt_perceptual", "retrieval_top1")]
            out.append(f"{style}, Table 1 (the paper's ours beats Toonify on FID and perceptual distance): +SC&PC vs "
                       f"{toonify_label(toonify)}: " + ", ".join(parts) + ".")
    for metric in ("gt_perceptual", "gt_features", "gt_attribute"):
        wins = [c["style"] for c in checks if c["metric"] == metric and c["sc+pc_vs_baseline"] == "better"]
        measured = [c["style"] for c in checks if c["metric"] == metric]
        if measured:
            out.append(f"Headline ({METRIC_TITLES[metric]}): +SC&PC beats the baseline with non-overlapping intervals "
                       f"in {len(wins)} of {len(measured)} styles ({', '.join(wins) or 'none'}).")
        else:
            out.append(f"Headline ({METRIC_TITLES[metric]}): not measured (instrument not configured).")
    return out


def write_report(out: str, *, study, evaluations: list[dict], cells: dict, root: str, quick: bool, wall_s: float,
                 pipeline, command: str | None = None, commit: str | None = None) -> dict:
    """Write study.json, study.md, the bar charts and the picture grids under `out`; return the JSON record."""
    import sys
    stats = aggregate(evaluations)
    styles = [s for s in (study.styles or pipeline.styles) if s in {e["style"] for e in evaluations}] or \
        sorted({e["style"] for e in evaluations})
    checks = paper_ordering_check(stats)
    default_levels = {e["style"]: e["default_pair_level"] for e in evaluations}
    best_level = {}
    for style, rows in stats.items() if study.pair_levels else ():     # no pair-level table asked for: no claim
        levels = [(rows[r]["gt_perceptual"]["mean"], r) for r in rows if r.startswith("sc+pc@")
                  and rows[r]["gt_perceptual"]["mean"] is not None]
        if levels:
            best_mean, best_row = min(levels)
            others = [compare(rows[best_row]["gt_perceptual"], rows[r]["gt_perceptual"], "gt_perceptual")
                      for _, r in levels if r != best_row]
            claim = ("only level" if not others else "one seed: no claim" if any(o.startswith("one seed")
                                                                                  for o in others)
                     else "separable from every other level" if all(o == "better" for o in others)
                     else "not separable from every other level")
            best_level[style] = {"level": int(best_row.split("@")[1]), "claim": claim}
    first = evaluations[0] if evaluations else {}
    record = {
        "study": config_to_dict(study), "pipeline": config_to_dict(pipeline), "root": root, "quick": quick,
        "command": command or " ".join(["python -m cluster.study", *sys.argv[1:]]),
        "commit": commit or git_commit(), "machine": _machine(), "wall_s": wall_s,
        "compute_s": sum(c["run_s"] or 0.0 for c in cells.values()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seeds": sorted({e["seed"] for e in evaluations}), "styles": styles,
        "test_set": first.get("test_identities"), "fid_reference": first.get("fid_reference"),
        "instruments": first.get("instruments", []), "default_pair_level": default_levels,
        "best_pair_level": best_level, "evaluations": evaluations, "aggregate": stats,
        "paper_ordering": checks, "table3": table3(stats, cells, evaluations), "cells": cells,
        "complete": all(c["status"] in ("ok", "skipped") for c in cells.values()),
        "paper": {"table4": PAPER_TABLE4, "table1": PAPER_TABLE1, "table3": PAPER_TABLE3},
    }
    record["verdict"] = verdict(checks, stats, len(record["seeds"]))
    figures = []
    chart_rows = [*ROWS, "toonify"]
    for metric in METRICS:
        means, stds = [], []
        for style in styles:
            rows = stats[style]
            picked = [r if r != "toonify" else best_toonify(rows) for r in chart_rows]
            means.append([rows[r][metric]["mean"] if r in rows else None for r in picked])
            stds.append([rows[r][metric]["std"] if r in rows else None for r in picked])
        if not any(m is not None for row in means for m in row):
            continue
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        chart = bar_chart(f"{METRIC_TITLES[metric]} ({better} is better), mean ± std over seeds", styles,
                          [ROW_LABELS.get(r, "Toonify (best swap)") for r in chart_rows], means, stds)
        storage.write_bytes(storage.join(out, f"{metric}.png"), png_bytes(chart))
        figures.append(metric)
    record["figures"] = figures
    grids = {}
    for style in styles:
        shown = next((e for e in sorted(evaluations, key=lambda e: e["seed"]) if e["style"] == style), None)
        if shown is None:
            continue
        valid = shown.get("swap_resolutions_valid", [])
        toon = [r for r in _toonify_rows(shown["rows"]) if int(r.rsplit("@", 1)[1]) == min(
            int(x.rsplit("@", 1)[1]) for x in _toonify_rows(shown["rows"]))] if _toonify_rows(shown["rows"]) else []
        grid, columns = picture_grid(shown, toon)
        uri = storage.join(out, f"{style}_grid.png")
        storage.write_bytes(uri, png_bytes(grid))
        grids[style] = {"uri": uri, "columns": columns, "seed": shown["seed"], "identities": shown["grid_identities"],
                        "swap_resolutions_valid": valid}
    record["grids"] = grids
    storage.write_text(storage.join(out, "study.json"), json.dumps(_json_safe(record), indent=2, sort_keys=True) + "\n")
    storage.write_text(storage.join(out, "study.md"), markdown(record))
    return record
