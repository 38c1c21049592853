"""Shared pieces of the world instruments' training loops: a time-budgeted step schedule, seeded batches, and the
speed measurement that plans a budget's steps."""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator

import torch

Log = Callable[[str], None]


class BudgetSchedule:
    """Runs until `max_steps` steps or `budget_s` seconds, whichever comes first, with a learning-rate factor that
    decays along a half cosine of that progress, so a run cut by its budget still ends at a small learning rate.

    Progress is max(step / max_steps, elapsed / budget_s): on a shared machine the step count depends on the load,
    the time does not. `min_steps` are always run.
    """

    def __init__(self, budget_s: float, max_steps: int, min_steps: int = 1):
        self.budget_s = max(budget_s, 1e-3)
        self.max_steps = max_steps
        self.min_steps = min(min_steps, max_steps)
        self.started = time.perf_counter()
        self.step = 0

    def progress(self) -> float:
        if self.step < self.min_steps:
            return self.step / max(self.max_steps, 1)
        return min(max(self.step / self.max_steps, self.elapsed() / self.budget_s), 1.0)

    def factor(self) -> float:
        return 0.5 * (1 + math.cos(math.pi * self.progress()))

    def advance(self) -> bool:
        """Count one finished step; False when training should stop."""
        self.step += 1
        return self.step < self.min_steps or self.progress() < 1.0

    def due(self, every_s: float = 30.0) -> bool:
        """True about every `every_s` seconds (for progress lines)."""
        now = self.elapsed()
        if now - getattr(self, "_last_log", 0.0) >= every_s:
            self._last_log = now
            return True
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless seeded mini-batches of indices into n items, reshuffled every epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def set_lr(optim: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for group in optim.param_groups:
        group["lr"] = base_lr * factor


def train_budgeted(optim: torch.optim.Optimizer, base_lr: float, schedule: BudgetSchedule, batch_source: Iterable,
                   compute: Callable[[Any], tuple[torch.Tensor, dict[str, float]]], seed: int, log: Log,
                   name: str) -> dict[str, list[float]]:
    """The loop every world instrument trains with: for each item of `batch_source`, set the scheduled learning
    rate, take one optimiser step on `compute(item)` -> (loss, extra figures), log the running means about every
    30 s, and stop when `schedule` says so. Torch's global RNG is seeded with `seed` inside and restored after
    (dropout, augmentation). Returns every step's figures: {"loss": [...], <extra>: [...]}."""
    history: dict[str, list[float]] = {"loss": []}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for item in batch_source:
            set_lr(optim, base_lr, schedule.factor())
            loss, figures = compute(item)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            history["loss"].append(float(loss.detach()))
            for key, value in figures.items():
                history.setdefault(key, []).append(float(value))
            if schedule.due():
                log(f"  {name} step {schedule.step}  " + "  ".join(f"{key} {recent_mean(values):.3f}"
                                                                 for key, values in history.items())
                    + f"  ({schedule.elapsed():.0f} s)")
            if not schedule.advance():
                break
    return history


def recent_mean(values: list[float], last: int = 50) -> float:
    """Mean of the last `last` values (the figure a training log and a training record report)."""
    tail = values[-last:]
    return sum(tail) / max(len(tail), 1)


def seconds_per_call(fn: Callable[[], Any], repeats: int = 2) -> float:
    """Wall-clock seconds per call of `fn`, after one untimed call (allocation, kernel selection or compilation);
    queued GPU work is waited for, so the figure is the work's and not its launch's."""
    fn()
    synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - started) / repeats


def synchronize() -> None:
    """Wait for queued CUDA work (a no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
