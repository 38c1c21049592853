"""The paper's table for one style of a run: rows = modes (baseline, +SC, +PC, +SC&PC), columns = FID,
perceptual distance, semantic distance; as Markdown (printed and saved) and JSON, next to the mode folders:
`<root>/runs/<run>/<style>/evaluation.md` and `evaluation.json`.
"""
from __future__ import annotations

import json
import math
from typing import Any

from fstrain import layout
from fstrain.data import storage
from fstrain.evaluate.runs import TRAINED

COLUMNS = (("fid", "FID", 2), ("perceptual_distance", "Perceptual distance", 4),
           ("semantic_distance", "Semantic distance", 4))


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _table_row(label: str, row: dict[str, Any], status: str = TRAINED) -> str:
    if status != TRAINED:
        step = f" (step {row['steps']})" if row.get("steps") is not None else ""
        return f"| {label} | {status}{step} | – | – | – |"
    cells = [_cell(row.get(key), digits) for key, _, digits in COLUMNS]
    steps = row.get("steps")
    return f"| {label} | " + " | ".join(cells) + f" | {'' if steps is None else steps} |"


def markdown(record: dict[str, Any]) -> str:
    lines = [f"## {record['style']} — run {record['run_id']}", ""]
    lines += [f"**{w}**" for w in record.get("warnings", [])]
    if record.get("warnings"):
        lines.append("")
    lines.append("| Mode | " + " | ".join(title for _, title, _ in COLUMNS) + " | Steps |")
    lines.append("|---|" + "---:|" * (len(COLUMNS) + 1))
    for row in record["rows"]:
        lines.append(_table_row(row["label"], row, row["status"]))
    reference = record.get("reference")
    if reference:
        lines.append(_table_row(f"*{reference['label']}*", reference))
    lines.append("")
    lines += [f"- {note}" for note in record.get("notes", [])]
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings rather than emit invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_report(record: dict[str, Any]) -> tuple[str, str]:
    """Write evaluation.json and evaluation.md into the style's run folder; returns their URIs."""
    json_uri = layout.evaluation(record["root"], record["run_id"], record["style"], "json")
    md_uri = layout.evaluation(record["root"], record["run_id"], record["style"], "md")
    storage.write_text(json_uri, json.dumps(_json_safe(record), indent=2, sort_keys=True) + "\n")
    storage.write_text(md_uri, markdown(record))
    return json_uri, md_uri
