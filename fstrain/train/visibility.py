"""What a person watching a run sees: metrics.jsonl, TensorBoard events, sample grids, a progress bar.

Everything is written under the run directory, which may be on S3; S3 has no append, so metrics are kept in
memory and the whole file is rewritten atomically on each flush, and TensorBoard writes to a local staging
folder that is uploaded on flush.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from fstrain.data import storage

ProgressCallback = Callable[[int, int, dict[str, float]], None]


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


class MetricsLog:
    """`metrics.jsonl`: one JSON object per step (step, every loss term, seconds/step)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.records: list[dict[str, Any]] = []

    def resume(self, step: int) -> None:
        """Keep the records of steps up to `step`: later ones belong to work the checkpoint does not hold."""
        if not storage.exists(self.uri):
            return
        lines = storage.read_text(self.uri).splitlines()
        self.records = [r for r in (json.loads(line) for line in lines if line.strip()) if r["step"] <= step]

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def flush(self) -> None:
        storage.write_text(self.uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))


class TensorBoardLog:
    """Scalars and sample images as TensorBoard event files under `<run_dir>/tensorboard/`."""

    def __init__(self, uri: str, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter
        self.uri = uri
        self._staging = None if is_local(uri) else tempfile.mkdtemp(prefix="fstrain-tb-")
        self.writer = SummaryWriter(log_dir=local_path(uri) if self._staging is None else self._staging,
                                    purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def image(self, step: int, name: str, grid: np.ndarray) -> None:
        self.writer.add_image(name, grid, step, dataformats="HWC")

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None:
        """The run's hyper-parameters in TensorBoard's HPARAMS tab, in this run's own event file (add_hparams
        would open a second writer in a sub-folder), linked to the scalars named by `metric_tags`."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        simple = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in hparams.items()}
        for summary in hparams_summary(simple, {tag: 0.0 for tag in metric_tags}):
            self.writer._get_file_writer().add_summary(summary)

    def flush(self) -> None:
        self.writer.flush()
        if self._staging is not None:
            for name in sorted(os.listdir(self._staging)):
                storage.upload_file(os.path.join(self._staging, name), storage.join(self.uri, name))

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    array = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def sample_grid(rows: list[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Stack rows of images (each (N, 3, H, W)) into one HWC uint8 grid with a white gutter."""
    tiles = [to_uint8(r) for r in rows]
    n, h, w, _ = tiles[0].shape
    grid = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c in range(n):
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[top:top + h, left:left + w] = row[c]
    return grid


SAMPLE_GRID_MIN_WIDTH = 256   # px: a 32 px run's 4 tiles would be 138 px wide, too small to judge
LABEL_PAD = 4


def labelled_sample_grid(rows: list[torch.Tensor], row_labels: list[str], title: str,
                         min_width: int = SAMPLE_GRID_MIN_WIDTH, pad: int = 2) -> np.ndarray:
    """`sample_grid` enlarged by a whole factor (nearest neighbour: no invented detail) to at least `min_width`
    px, with a title strip on top (step, style, mode) and each row's name on its left (G(z), G'(z))."""
    from PIL import ImageDraw, ImageFont

    tiles = sample_grid(rows, pad=0)
    n = rows[0].shape[0]
    tile_h, tile_w = rows[0].shape[2], rows[0].shape[3]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(measure.textbbox((0, 0), label, font=font)[2] for label in row_labels) + 2 * LABEL_PAD
    title_h = measure.textbbox((0, 0), title, font=font)[3] + 2 * LABEL_PAD
    factor = max(1, -(-(min_width - label_w) // (n * (tile_w + pad))))
    big = Image.fromarray(tiles).resize((tiles.shape[1] * factor, tiles.shape[0] * factor), Image.NEAREST)
    big_tile_h, big_tile_w = tile_h * factor, tile_w * factor
    width = max(min_width, label_w + n * (big_tile_w + pad) + pad)
    height = title_h + len(rows) * (big_tile_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((LABEL_PAD, LABEL_PAD), title, fill=(0, 0, 0), font=font)
    for r, label in enumerate(row_labels):
        top = title_h + pad + r * (big_tile_h + pad)
        draw.text((LABEL_PAD, top + big_tile_h // 2 - 6), label, fill=(0, 0, 0), font=font)
        for c in range(n):
            tile = big.crop((c * big_tile_w, r * big_tile_h, (c + 1) * big_tile_w, (r + 1) * big_tile_h))
            canvas.paste(tile, (label_w + pad + c * (big_tile_w + pad), top))
    return np.asarray(canvas)


def write_png(uri: str, grid: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    storage.write_bytes(uri, buffer.getvalue())


class ProgressBar:
    """tqdm bar on the main process with the latest losses; also forwards to an optional callback."""

    def __init__(self, total: int, initial: int, enabled: bool, description: str,
                 callback: ProgressCallback | None = None):
        from tqdm.auto import tqdm
        self.total = total
        self.callback = callback
        # TQDM_DISABLE=1 (set by the cluster job, which prints its own per-style lines) silences the bar.
        disabled = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
        self.bar = tqdm(total=total, initial=initial, disable=disabled, desc=description, dynamic_ncols=True)

    def update(self, step: int, losses: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
        if self.callback is not None:
            self.callback(step, self.total, dict(losses))

    def close(self) -> None:
        self.bar.close()
