"""Wrappers around real cluster.train stages for fault-injection tests (importable by Ray workers)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class PauseOnFirstAttempt:
    """Run `inner`; on attempt 1, once it reports step `pause_at_step`, write `<pid_dir>/<style>-<stage>.pid` and
    wait to be killed from outside — so a test can SIGKILL the worker in the middle of a real fine-tune."""
    inner: Callable
    pid_dir: str
    pause_at_step: int

    def __call__(self, ctx) -> dict:
        if ctx.attempt == 1:
            report = ctx.report

            def report_then_pause(step: int, total: int, loss: float | None = None) -> None:
                report(step, total, loss)
                if step == self.pause_at_step:
                    Path(self.pid_dir, f"{ctx.style}-{ctx.stage}.pid").write_text(str(os.getpid()))
                    time.sleep(120)

            ctx.report = report_then_pause
        return self.inner(ctx)
