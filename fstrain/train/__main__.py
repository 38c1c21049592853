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

from fstrain.config import ConfigError, load_config
from fstrain.data import storage
from fstrain.settings import PipelineConfig
from fstrain.train import MODES, DatasetError, ModelMissingError, ResumeError, run_finetune


def default_run_id(config_uri: str) -> str:
    """`<config name>-<hash of its text>`: rerunning the same config resumes, an edited one starts afresh."""
    digest = hashlib.sha256(storage.read_bytes(config_uri)).hexdigest()[:8]
    return f"{PurePosixPath(config_uri).stem}-{digest}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fstrain.train", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="pipeline YAML (local path or s3:// URI)")
    parser.add_argument("--style", required=True, help="style name: reads <root>/datasets/<style>/")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--root", required=True, help="pipeline root (local directory or s3://bucket/prefix)")
    parser.add_argument("--run-id", default=None, help="default: <config name>-<hash of the config text>")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, PipelineConfig)
        run_id = args.run_id or default_run_id(args.config)
        result = run_finetune(config, style=args.style, mode=args.mode, root=args.root, run_id=run_id,
                              steps=args.steps)
    except (ConfigError, DatasetError, ModelMissingError, ResumeError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:      # one report per job, not one per process
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
