"""The job's contact sheet: `<out>/gallery.html` (inputs x styles, thumbnails) and `<out>/contact_sheet.png`.

Thumbnails are written by the stages for the first `--gallery-rows` keys under `<out>/_gallery/<key>/` (the
aligned input and the first sample of each style), so the page uses relative links and works the same for a
local folder and for an s3:// output (download or serve the prefix).
"""
from __future__ import annotations

import html
from urllib.parse import quote

import numpy as np

from batch import manifest
from batch.stages import JobSpec, thumbnail_uri
from fstrain.data import storage


SHEET_MIN_CELL = 96   # px: small thumbnails (tiny demo models) are enlarged so a person can see them


def _at_least(pixels: np.ndarray, side: int) -> np.ndarray:
    """Enlarge by a whole factor (nearest neighbour, no invented detail) until the cell is at least `side` px."""
    factor = max(1, -(-side // max(pixels.shape[0], 1)))
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else pixels


def _relative(spec: JobSpec, uri: str) -> str:
    """A link relative to the page; names may hold '#', '?', '%' or spaces, so it is percent-encoded."""
    return quote(uri[len(spec.output.rstrip("/")) + 1:])


def write_gallery(spec: JobSpec, records: list[manifest.Record]) -> dict[str, str]:
    """Write gallery.html and contact_sheet.png for the ok records among the thumbnail keys."""
    from fstrain.stylize.images import decode_png, image_grid, png_bytes

    wanted = set(spec.thumbnail_keys)
    shown = [r for r in sorted(records, key=lambda r: r.key) if r.key in wanted and r.status == manifest.OK]
    columns = ["input", *spec.styles]
    header = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows_html, sheet_rows = [], []
    for record in shown:
        cells, sheet_row = [], []
        for column in columns:
            uri = thumbnail_uri(spec, record.key, column)
            try:
                pixels = decode_png(storage.read_bytes(uri))
            except storage.NotFoundError:
                cells.append("<td>missing</td>")
                sheet_row.append(None)
                continue
            target = record.input if column == "input" else record.outputs.get(column)
            if isinstance(target, list):
                target = target[0]
            link = _relative(spec, target) if target and target.startswith(spec.output) else target
            cells.append(f'<td><a href="{html.escape(link or "")}"><img src="{html.escape(_relative(spec, uri))}" '
                         f'alt="{html.escape(record.key)} {html.escape(column)}"></a></td>')
            sheet_row.append(_at_least(np.asarray(pixels), SHEET_MIN_CELL))
        rows_html.append(f"<tr><th>{html.escape(record.key)}</th>{''.join(cells)}</tr>")
        sheet_rows.append(sheet_row)
    errors = [r for r in records if r.status == manifest.ERROR]
    error_items = "".join(f"<li><b>{html.escape(r.key)}</b> [{html.escape(r.stage)}] {html.escape(r.message)}"
                          f" &mdash; {html.escape(r.action)}</li>" for r in sorted(errors, key=lambda r: r.key))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>batch {html.escape(spec.job_id)}</title>"
            "<style>td,th{padding:2px;text-align:center}img{display:block}</style></head><body>"
            f"<h1>Job {html.escape(spec.job_id)}: {len(shown)} of {len(records)} inputs shown</h1>"
            f"<table><tr><th>key</th>{header}</tr>{''.join(rows_html)}</table>"
            f"<h2>Errors ({len(errors)})</h2><ul>{error_items}</ul></body></html>")
    written = {"html": storage.join(spec.output, "gallery.html")}
    storage.write_text(written["html"], page)
    if any(cell is not None for row in sheet_rows for cell in row):
        written["contact_sheet"] = storage.join(spec.output, "contact_sheet.png")
        storage.write_bytes(written["contact_sheet"], png_bytes(image_grid(sheet_rows, column_labels=columns)))
    return written
