"""Fault-injecting stage classes for batch.stylize tests, passed as `batch.stylize.Stages(stylize=...)`.

Production code knows nothing of them: the test hands the subclass to `main(argv, stages)`, Ray pickles it by
reference, and the workers import it from here (the test puts tests/ on the workers' PYTHONPATH).
"""
from __future__ import annotations

import os

from batch.stages import StylizeActor
from fstrain.data import storage


def crash_marker(output: str) -> str:
    """The object whose presence makes a CrashOnceStylizeActor die (one per job output)."""
    return storage.join(output, "_test-hooks", "crash-once")


class CrashOnceStylizeActor(StylizeActor):
    """Dies (the whole worker process, mid-batch) on its first batch if the job's crash marker exists, deleting
    the marker first; Ray must restart the actor and retry the batch."""

    def __call__(self, batch):
        marker = crash_marker(self.spec.output)
        if storage.exists(marker):
            storage.delete(marker)
            os._exit(17)  # not a Python exception: the process is gone, as when a node or driver kills it
        return super().__call__(batch)
