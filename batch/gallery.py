"""The job's contact sheet: `<out>/gallery.html` (inputs x styles, thumbnails) and `<out>/contact_sheet.png`.

Thumbnails are written by the stages for the first `--gallery-rows` keys under `<out>/_gallery/<column>/` (the
aligned input and the first sample of each style). The page links only relative to itself, so it works the same
for a local folder, a moved folder and an s3:// output served over HTTP (download or serve the prefix).

Columns: the key, the input, each style, each style's ground truth where it is known (`truth`: a folder holding
`<style>/<input's relative path>` pictures, e.g. the synthetic world's render of the same identity), and the
errors a person sorts by (click a header): the identity distance 1 - cos(ID(input), ID(output)) recorded by the
stylize stage, and the mean absolute pixel error against the truth. Thumbnails keep their own pixels and are shown
at least `DISPLAY_MIN` px wide, enlarged by a whole factor with `image-rendering: pixelated` (no invented detail).

The page needs no pixels: which thumbnails exist comes from one listing. The contact sheet does: on a rerun the
cells of rows carried over from an earlier run are cut out of the previous sheet (`_gallery/sheet.json` records
its layout) instead of downloading their thumbnails again; only rows made by this run are read.
"""
from __future__ import annotations

import html
import sys
from typing import Any, Iterable
from urllib.parse import quote

import numpy as np

from batch import manifest
from batch.stages import JobSpec, thumbnail, thumbnail_uri
from fstrain.data import storage

SHEET_MIN_CELL = 96   # px: small thumbnails (tiny demo models) are enlarged so a person can see them
DISPLAY_MIN = 128     # px: the page shows every thumbnail at least this wide
SHEET_PAD = 2         # fstrain.stylize.images.image_grid's default padding
SORT_SCRIPT = """
<script>
// Click a header with data-sort to sort the rows by that column (numbers; blank cells last); again to reverse.
document.querySelectorAll('th[data-sort]').forEach(function (th) {
  th.style.cursor = 'pointer';
  th.addEventListener('click', function () {
    var body = document.querySelector('#gallery tbody'), col = th.cellIndex;
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    var value = function (row) { var v = row.cells[col].dataset.value; return v === undefined || v === '' ? NaN : +v; };
    Array.from(body.rows).sort(function (a, b) {
      var x = value(a), y = value(b);
      if (isNaN(x)) return isNaN(y) ? 0 : 1; if (isNaN(y)) return -1;
      return dir * (x - y);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
</script>"""


def _at_least(pixels: np.ndarray, side: int) -> np.ndarray:
    """Enlarge by a whole factor (nearest neighbour, no invented detail) until the cell is at least `side` px."""
    factor = max(1, -(-side // max(pixels.shape[0], 1)))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else pixels


def display_side(native: int) -> int:
    """The on-page width of a `native`-px thumbnail: a whole multiple, at least DISPLAY_MIN."""
    return native * max(1, -(-DISPLAY_MIN // max(native, 1)))


def _relative(spec: JobSpec, uri: str) -> str:
    """A link relative to the page; names may hold '#', '?', '%' or spaces, so it is percent-encoded."""
    return quote(uri[len(spec.output.rstrip("/")) + 1:])


def truth_thumbnail_uri(spec: JobSpec, key: str, style: str) -> str:
    return thumbnail_uri(spec, key, f"truth-{style}")


def _identity_distance(record: manifest.Record, style: str) -> float | None:
    similarity = (record.face.get("identity") or {}).get("similarity", {}).get(style)
    return None if similarity is None else round(1.0 - float(similarity), 4)


def _first(target: Any) -> str | None:
    return target[0] if isinstance(target, list) else target


def _truth_errors(spec: JobSpec, shown: list[manifest.Record], truth: str) -> dict[tuple[str, str], float]:
    """Per (key, style) where `truth/<style>/<key>` exists: its thumbnail under _gallery/truth-<style>/ and the
    mean absolute error (0-255) between the output and the truth at the output's size."""
    from fstrain.data.images import decode_image

    errors = {}
    for record in shown:
        for style in spec.styles:
            truth_uri = storage.join(truth, style, record.key)
            output = _first(record.outputs.get(style))
            if not output or not storage.exists(truth_uri):
                continue
            made = np.asarray(decode_image(storage.read_bytes(output), output).convert("RGB"))
            true = decode_image(storage.read_bytes(truth_uri), truth_uri).convert("RGB")
            true = np.asarray(true.resize(made.shape[1::-1]))
            storage.write_bytes(truth_thumbnail_uri(spec, record.key, style), thumbnail(true, spec.thumbnail_size))
            errors[(record.key, style)] = round(float(np.abs(made.astype(np.float64) - true).mean()), 2)
    return errors


def write_gallery(spec: JobSpec, records: list[manifest.Record], remade: Iterable[str] | None = None,
                  truth: str | None = None) -> dict[str, str]:
    """Write gallery.html and contact_sheet.png for the ok records among the thumbnail keys.

    `remade`: keys whose thumbnails this run wrote (None: all of them); the others' sheet cells are reused.
    `truth`: a folder of ground-truth pictures `<style>/<key>` (optional)."""
    wanted = set(spec.thumbnail_keys)
    shown = [r for r in sorted(records, key=lambda r: r.key) if r.key in wanted and r.status == manifest.OK]
    truth_errors = _truth_errors(spec, shown, truth) if truth else {}
    if truth and shown and not truth_errors:
        print(f"[batch] --truth {truth}: no picture <style>/<key> there for any shown input (e.g. "
              f"{storage.join(truth, spec.styles[0], shown[0].key)}); the gallery has no ground-truth column",
              file=sys.stderr)
    truth_styles = [s for s in spec.styles if any(style == s for _, style in truth_errors)]
    picture_columns = ["input", *spec.styles, *(f"truth-{s}" for s in truth_styles)]
    labels = {"input": "input (aligned)", **{s: s for s in spec.styles},
              **{f"truth-{s}": f"{s} (ground truth)" for s in truth_styles}}
    has_identity = any(_identity_distance(r, s) is not None for r in shown for s in spec.styles)
    existing = set(storage.list_uris(storage.join(spec.output, "_gallery"), suffixes=".jpg"))
    native = min(spec.size, spec.thumbnail_size)
    side = display_side(native)

    header = "<th data-sort='text'>key</th>" + "".join(f"<th>{html.escape(labels[c])}</th>" for c in picture_columns)
    if has_identity:
        header += "<th data-sort='num'>identity distance (mean over styles)</th>"
    if truth_errors:
        header += "<th data-sort='num'>error vs ground truth (mean abs, 0-255)</th>"
    rows_html = []
    for index, record in enumerate(shown):
        cells = [f"<th data-value='{index}' title='{html.escape(record.input)}'>{html.escape(record.key)}</th>"]
        for column in picture_columns:
            uri = thumbnail_uri(spec, record.key, column)
            if uri not in existing:
                cells.append("<td>missing</td>")
                continue
            image = (f'<img src="{html.escape(_relative(spec, uri))}" width="{side}" height="{side}" '
                     f'alt="{html.escape(record.key)} {html.escape(labels[column])}">')
            target = _first(record.outputs.get(column)) if column in spec.styles else None
            if target and target.startswith(spec.output.rstrip("/") + "/"):
                image = f'<a href="{html.escape(_relative(spec, target))}">{image}</a>'
            cells.append(f"<td>{image}</td>")
        if has_identity:
            distances = [d for d in (_identity_distance(record, s) for s in spec.styles) if d is not None]
            mean = round(float(np.mean(distances)), 4) if distances else ""
            cells.append(f"<td data-value='{mean}'>{mean}</td>")
        if truth_errors:
            errors = [truth_errors[(record.key, s)] for s in spec.styles if (record.key, s) in truth_errors]
            mean = round(float(np.mean(errors)), 2) if errors else ""
            cells.append(f"<td data-value='{mean}'>{mean}</td>")
        rows_html.append(f"<tr>{''.join(cells)}</tr>")
    errors = [r for r in records if r.status == manifest.ERROR]
    error_items = "".join(f"<li><b>{html.escape(r.key)}</b> [{html.escape(r.stage)}] {html.escape(r.message)}"
                          f" &mdash; {html.escape(r.action)}</li>" for r in sorted(errors, key=lambda r: r.key))
    pixelated = "image-rendering:pixelated;" if side > native else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>batch {html.escape(spec.job_id)}</title>"
            f"<style>td,th{{padding:2px;text-align:center}}img{{display:block;{pixelated}}}"
            f"th[data-sort]{{text-decoration:underline dotted}}</style></head><body>"
            f"<h1>Job {html.escape(spec.job_id)}: {len(shown)} of {len(records)} inputs shown</h1>"
            f"<p>Thumbnails are {native} px, shown at {side} px; click a column with a dotted underline to sort.</p>"
            f"<table id='gallery'><thead><tr>{header}</tr></thead><tbody>{''.join(rows_html)}</tbody></table>"
            f"<h2>Errors ({len(errors)})</h2><ul>{error_items}</ul>{SORT_SCRIPT}</body></html>")
    written = {"html": storage.join(spec.output, "gallery.html")}
    storage.write_text(written["html"], page)
    # The sheet's header has ~21 characters per 128 px cell: "illustration (ground truth)" would be cut short.
    sheet_labels = {**labels, "input": "input", **{f"truth-{s}": f"{s} truth" for s in truth_styles}}
    sheet = _write_contact_sheet(spec, shown, picture_columns, sheet_labels, existing, remade)
    if sheet:
        written["contact_sheet"] = sheet
    return written


def _write_contact_sheet(spec: JobSpec, shown: list[manifest.Record], columns: list[str], labels: dict[str, str],
                         existing: set[str], remade: Iterable[str] | None) -> str | None:
    """contact_sheet.png of the shown rows; cells of rows not remade are cut from the previous sheet."""
    from fstrain.stylize.images import LABEL_STRIP, decode_png, image_grid, png_bytes

    sheet_uri = storage.join(spec.output, "contact_sheet.png")
    layout_uri = storage.join(spec.output, "_gallery", "sheet.json")
    cell = SHEET_MIN_CELL if min(spec.size, spec.thumbnail_size) <= SHEET_MIN_CELL else None
    remade = None if remade is None else set(remade)
    layout = {"rows": [r.key for r in shown], "columns": columns,
              "cells": {r.key: [c for c in columns if thumbnail_uri(spec, r.key, c) in existing] for r in shown}}
    previous, old_sheet = None, None
    if remade is not None and storage.exists(layout_uri) and storage.exists(sheet_uri):
        previous = storage.read_json(layout_uri)
        if previous.get("cells") == layout["cells"] and previous.get("columns") == columns \
                and previous.get("rows") == layout["rows"] and not remade & set(layout["rows"]):
            return sheet_uri       # nothing shown changed: the sheet on disk is this sheet
    reusable = {}
    if previous is not None and previous.get("cell_px"):
        old_sheet = np.asarray(decode_png(storage.read_bytes(sheet_uri)))
        w, h = previous["cell_px"]
        for r, key in enumerate(previous.get("rows", [])):
            if key in remade:
                continue
            for c, column in enumerate(previous.get("columns", [])):
                if column in previous["cells"].get(key, []):
                    y, x = LABEL_STRIP + SHEET_PAD + r * (h + SHEET_PAD), SHEET_PAD + c * (w + SHEET_PAD)
                    reusable[(key, column)] = old_sheet[y:y + h, x:x + w]
    rows = []
    for record in shown:
        row = []
        for column in columns:
            if column not in layout["cells"][record.key]:
                row.append(None)
            elif (record.key, column) in reusable:
                row.append(reusable[(record.key, column)])
            else:
                pixels = decode_png(storage.read_bytes(thumbnail_uri(spec, record.key, column)))
                row.append(_at_least(np.asarray(pixels), cell or 0))
        rows.append(row)
    if not any(c is not None for row in rows for c in row):
        return None
    cells = [c for row in rows for c in row if c is not None]
    layout["cell_px"] = [max(c.shape[1] for c in cells), max(c.shape[0] for c in cells)]
    storage.write_bytes(sheet_uri, png_bytes(image_grid(rows, pad=SHEET_PAD,
                                                        column_labels=[labels[c] for c in columns])))
    storage.write_json(layout_uri, layout)
    return sheet_uri
