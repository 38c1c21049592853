"""python -m fstrain.train CONFIG --style NAME --mode baseline|sc|pc|sc+pc --root URI [--run-id ID] [--steps N]

Several processes: `torchrun --nproc_per_node N -m fstrain.train ...` (or `accelerate launch -m fstrain.train`).
Running the same command again with the same run id resumes from the newest checkpoint.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import PurePosixPath

from fstrain import preflight
from fstrain.cli import UsageError, add_debug_flag, run_command
from fstrain.config import check_value, load_config
from fstrain.data import storage
from fstrain.settings import AtLeast1, Mode, PipelineConfig
from fstrain.train import MODES, DatasetError, ModelMissingError, ResumeError, run_finetune
from fstrain.train.resources import mode_terms


def default_run_id(config_uri: str) -> str:
    """`<config name>-<hash of its text>`: rerunning the same config resumes, an edited one starts afresh."""
    digest = hashlib.sha256(storage.read_bytes(config_uri)).hexdigest()[:8]
    return f"{PurePosixPath(config_uri).stem}-{digest}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fstrain.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="pipeline YAML (local path or s3:// URI)")
    parser.add_argument("--style", required=True, help="style name: reads <root>/datasets/<style>/")
    parser.add_argument("--mode", required=True, help=" | ".join(MODES))
    parser.add_argument("--root", required=True, help="pipeline root (local directory or s3://bucket/prefix)")
    parser.add_argument("--run-id", default=None, help="default: <config name>-<hash of the config text>")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps (>= 1)")
    add_debug_flag(parser)
    return parser.parse_args(argv)


def preflight_checks(config: PipelineConfig, args: argparse.Namespace) -> None:
    """Everything a user can get wrong, checked before a model or an image is read (exit status 2)."""
    preflight.storage_usable(args.root, "--root", write=True)
    preflight.dataset_exists(args.root, args.style)
    use_sem, use_pair = mode_terms(args.mode)       # LPIPS for either term, the identity net for L_sem's ID part
    keys = ["base_generator"] + (["lpips_backbone"] if use_sem or use_pair else [])
    keys += ["identity"] if use_sem and config.train.lambda_id > 0 else []
    preflight.models_exist(config, args.root, keys, args.config)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_value(args.mode, Mode, "--mode")
    if args.steps is not None:
        check_value(args.steps, AtLeast1, "--steps")
    config = load_config(args.config, PipelineConfig)
    preflight_checks(config, args)
    run_id = args.run_id or default_run_id(args.config)
    try:
        result = run_finetune(config, style=args.style, mode=args.mode, root=args.root, run_id=run_id,
                              steps=args.steps)
    except (DatasetError, ModelMissingError, ResumeError) as exc:
        # found while loading: a model of another size, a run id already past --steps, an unreadable dataset
        raise UsageError(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:      # one report per job, not one per process
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
