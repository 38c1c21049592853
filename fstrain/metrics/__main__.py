"""python -m fstrain.metrics random-inception OUT [--layout torchvision|pytorch-fid] [--seed N]

Writes RANDOM Inception-v3 weights (and `OUT.json` marking them random) for tests and demos. An FID computed
with them exercises every code path but measures nothing; `fstrain.evaluate` says so next to the numbers.
"""
from __future__ import annotations

import argparse
import sys

from fstrain.metrics.features import LAYOUTS, save_random_inception_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fstrain.metrics", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    random_cmd = commands.add_parser("random-inception", help="write RANDOM Inception-v3 weights (tests/demos)")
    random_cmd.add_argument("out", help="output path or s3:// URI, e.g. models/inception_RANDOM.pth")
    random_cmd.add_argument("--layout", choices=LAYOUTS, default="torchvision")
    random_cmd.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_random_inception_weights(args.out, args.layout, args.seed)
    print(f"wrote RANDOM Inception-v3 weights ({args.layout} layout) to {args.out} (+ {args.out}.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
