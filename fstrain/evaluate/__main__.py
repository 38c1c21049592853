"""python -m fstrain.evaluate --root URI --run-id ID [--style NAME ...] [--config YAML] [overrides]

Evaluates every style of a training run (or the named ones) and prints the paper's table per style, writing
`evaluation.json` and `evaluation.md` to `<root>/runs/<run>/<style>/`. The config is `--config`, or else the one
stored in the run's checkpoints; `--inception-weights`, `--photos` and `--num-samples` override its
`evaluate` section.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing

import torch

from fstrain import layout, preflight
from fstrain.cli import add_debug_flag, run_command
from fstrain.config import ConfigError, check_value, load_config
from fstrain.data import storage
from fstrain.evaluate import EvaluationError, config_from_run, evaluate_style, find_styles, mode_runs, markdown, \
    write_report
from fstrain.models.checkpoints import CheckpointError
from fstrain.models.registry import ChecksumError, MissingWeightsError, WeightsMismatchError
from fstrain.settings import EvaluateConfig, PipelineConfig
from fstrain.train import ModelMissingError


NUM_SAMPLES = typing.get_type_hints(EvaluateConfig, include_extras=True)["num_samples"]   # the key's range


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fstrain.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="pipeline root (local directory or s3://bucket/prefix)")
    parser.add_argument("--run-id", required=True, help="the training run: <root>/runs/<run-id>/")
    parser.add_argument("--style", action="append", default=[], help="style to evaluate (repeatable; default: all)")
    parser.add_argument("--config", default=None, help="pipeline YAML (default: the config stored in the run)")
    parser.add_argument("--inception-weights", default=None, help="override evaluate.inception_weights")
    parser.add_argument("--photos", default=None, help="override evaluate.photos (folder/prefix or 'synthetic')")
    parser.add_argument("--num-samples", type=int, default=None, help="override evaluate.num_samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def _as_typed(path: str | None) -> str | None:
    """A path typed on the command line is relative to the working directory, not to the pipeline root."""
    if path is None or "://" in path or path.startswith("/") or path == "synthetic":
        return path
    return os.path.abspath(path)


def with_overrides(config: PipelineConfig, args: argparse.Namespace) -> PipelineConfig:
    changes = {name: value for name, value in (("inception_weights", _as_typed(args.inception_weights)),
                                               ("photos", _as_typed(args.photos)), ("num_samples", args.num_samples))
               if value is not None}
    return dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, **changes))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.num_samples is not None:
        check_value(args.num_samples, NUM_SAMPLES, "--num-samples")
    preflight.storage_usable(args.root, "--root", write=True)     # missing bucket, credentials, endpoint: exit 2
    try:
        styles = args.style or find_styles(args.root, args.run_id)
        if not styles:
            raise EvaluationError(f"{layout.run(args.root, args.run_id)}: no trained modes found; check "
                                  f"--root and --run-id (or name a --style)")
        if args.config:
            config = load_config(args.config, PipelineConfig)
        else:
            config, source = config_from_run([run for style in styles for run in mode_runs(args.root, args.run_id,
                                                                                            style)])
            print(f"config: as stored in {source}", file=sys.stderr)
        config = with_overrides(config, args)
        for style in styles:
            record = evaluate_style(config, root=args.root, run_id=args.run_id, style=style, device=args.device,
                                    progress=lambda message: print(message, file=sys.stderr))
            json_uri, md_uri = write_report(record)
            print(markdown(record))
            print(f"wrote {json_uri} and {md_uri}\n")
    except (EvaluationError, ConfigError, ModelMissingError, MissingWeightsError, WeightsMismatchError,
            ChecksumError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
