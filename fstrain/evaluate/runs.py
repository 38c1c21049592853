"""What a training run holds: its styles, and per style the state of each mode (trained / not finished / absent).

Run layout (fstrain.layout): `<root>/runs/<run>/<style>/<mode>/` with `latest.json`, `checkpoints/step-*.pt` and,
once finished, `final/generator.pt` (+ `.json` metadata with "steps").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fstrain import layout
from fstrain.config import config_from_dict
from fstrain.data import storage
from fstrain.models.checkpoints import metadata_uri
from fstrain.settings import PipelineConfig
from fstrain.train import checkpointing, resources

MODES = resources.MODES                  # baseline, sc, pc, sc+pc: the paper's row order
MODE_LABELS = {"baseline": "baseline", "sc": "+SC", "pc": "+PC", "sc+pc": "+SC&PC"}
TRAINED, NOT_FINISHED, NOT_TRAINED = "trained", "not finished", "not trained"


class EvaluationError(RuntimeError):
    """The run cannot be evaluated; the message names the URI and what to do."""


@dataclass
class ModeRun:
    mode: str
    run_dir: str
    status: str                  # TRAINED | NOT_FINISHED | NOT_TRAINED
    generator: str | None        # final g_ema (rosinality layout) when trained
    steps: int | None            # final step, or the latest checkpoint's step when not finished

    @property
    def label(self) -> str:
        return MODE_LABELS[self.mode]


def style_dir(root: str, run_id: str, style: str) -> str:
    return layout.style_run(root, run_id, style)


def find_styles(root: str, run_id: str) -> list[str]:
    """Styles with at least one mode directory holding a latest.json or a final generator."""
    return layout.run_styles(root, run_id, MODES)


def mode_run(root: str, run_id: str, style: str, mode: str) -> ModeRun:
    run_dir = layout.mode_run(root, run_id, style, mode)
    final = layout.final_generator(run_dir)
    if storage.exists(final):
        steps = None
        if storage.exists(metadata_uri(final)):
            steps = storage.read_json(metadata_uri(final)).get("steps")
        return ModeRun(mode, run_dir, TRAINED, final, steps)
    latest = checkpointing.latest_checkpoint(run_dir)
    if latest is not None:
        return ModeRun(mode, run_dir, NOT_FINISHED, None, latest[0])
    return ModeRun(mode, run_dir, NOT_TRAINED, None, None)


def mode_runs(root: str, run_id: str, style: str) -> list[ModeRun]:
    return [mode_run(root, run_id, style, mode) for mode in MODES]


def config_from_run(runs: list[ModeRun]) -> tuple[PipelineConfig, str]:
    """The pipeline config a run was trained with (stored in its checkpoints), and where it was read."""
    for run in runs:
        latest = checkpointing.latest_checkpoint(run.run_dir)
        if latest is None:
            continue
        checkpoint: dict[str, Any] = checkpointing.load_checkpoint(latest[1])
        if "config" in checkpoint:
            return config_from_dict(checkpoint["config"], PipelineConfig, source=latest[1]), latest[1]
    raise EvaluationError("no checkpoint of this run stores its config; pass --config with the pipeline YAML")
