"""Build pseudo-pair shards for one style.

    python -m fstrain.pairs CONFIG --style NAME --root URI --run-id ID [--levels 1,2,3] [--baseline URI]
                                   [--device cuda]

Reads `<root>/datasets/<style>/`, writes the run's pairs `<root>/runs/<ID>/<style>/pairs/level{1,2,3}/shard-*.tar`,
a contact sheet and a summary (fstrain.layout). Level 2 needs the baseline fine-tune G*: by default the run's own
(`<root>/runs/<ID>/<style>/baseline/final/generator.pt`), or `--baseline URI` (a rosinality generator .pt).
Rerunning reuses shards whose recorded inputs (sha256 of dataset shard, G, G*, encoders, nets; settings) are
unchanged, and rebuilds the others, saying why.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from fstrain.pairs.build import PairsError, make_pairs


def main(argv: list[str] | None = None) -> int:
    from fstrain import preflight
    from fstrain.cli import UsageError, add_debug_flag
    from fstrain.config import load_config
    from fstrain.models.registry import ChecksumError, MissingWeightsError, WeightsMismatchError
    from fstrain.pairs.build import level_networks, parse_levels
    from fstrain.settings import PipelineConfig

    parser = argparse.ArgumentParser(prog="python -m fstrain.pairs", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--style", required=True)
    parser.add_argument("--root", required=True, help="pipeline root (local dir or s3://bucket/prefix)")
    parser.add_argument("--levels", default=None, help="comma-separated subset of 1,2,3 (default: config pairs.levels)")
    parser.add_argument("--run-id", required=True,
                        help="the run the pairs belong to (its baseline G* feeds level 2, its constrained modes read "
                             "them)")
    parser.add_argument("--baseline", default=None,
                        help="URI of the baseline fine-tune G* for level 2 (default: the run's baseline)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    config = load_config(args.config, PipelineConfig)     # every value checked before any work
    try:
        levels = parse_levels(args.levels if args.levels is not None else config.pairs.levels)
    except PairsError as exc:
        raise UsageError(f"--levels: {exc}") from None
    preflight.storage_usable(args.root, "--root", write=True)
    preflight.dataset_exists(args.root, args.style)
    preflight.models_exist(config, args.root, level_networks(config, levels, configured_only=True), args.config)
    bar = tqdm(desc=f"pairs {args.style}", unit="shard")
    images = tqdm(desc=f"pairs {args.style} images paired", unit="image")   # moves within a long shard

    def progress(done: int, total: int, info: dict) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(f"{info['shard']} levels {info['levels_written'] or 'done before'}")
        bar.refresh()

    try:
        summary = make_pairs(config, style=args.style, root=args.root, run_id=args.run_id, levels=args.levels,
                             baseline_generator_uri=args.baseline, progress=progress, device=args.device,
                             log=lambda line: print(line, file=sys.stderr, flush=True), images_done=images.update)
    except (PairsError, MissingWeightsError, ChecksumError, WeightsMismatchError) as exc:
        raise UsageError(str(exc)) from None    # a missing G*, a pin that does not match, a model of another size
    finally:
        images.close()
        bar.close()
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    from fstrain.cli import run_command

    sys.exit(run_command(main))
