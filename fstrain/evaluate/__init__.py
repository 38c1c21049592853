"""`python -m fstrain.evaluate --root URI --run-id ID [--style NAME]`: the paper's table for a training run.

Per style: rows baseline, +SC, +PC, +SC&PC (missing ones are "not trained"), columns FID, perceptual
distance and semantic distance (definitions in `fstrain.metrics.distances` and `runner`), plus the base G as a
reference line; printed and written to `<root>/runs/<run>/<style>/evaluation.{md,json}`.
"""
from fstrain.evaluate.report import markdown, write_report  # noqa: F401
from fstrain.evaluate.runner import evaluate_style  # noqa: F401
from fstrain.evaluate.runs import (MODE_LABELS, MODES, EvaluationError, config_from_run, find_styles,  # noqa: F401
                                   mode_runs)
