"""The `fstrain-cluster` console script: `fstrain-cluster train|study|demo …`, the same flags and exit codes as
`python -m cluster.train|study|demo` (the rule lives in fstrain.cli)."""
from __future__ import annotations

from fstrain.cli import dispatch

COMMANDS = {"train": "cluster.train", "study": "cluster.study", "demo": "cluster.demo"}


def main() -> int:
    return dispatch(COMMANDS, "fstrain-cluster")
