"""The per-style DAG runner: every style runs its stages in order, all styles in parallel, on whatever Ray is up.

    summary = run_styles(["cartoon", "anime"], [Stage("baseline", fine_tune), Stage("pairs", make_pairs), ...],
                         root="s3://bucket/proj", run_id="r1", resources_per_style={"num_gpus": 1})

Why plain Ray tasks and not Ray Train's TorchTrainer: a style's fine-tune is one Accelerate run that needs one GPU
in the typical case, and its stages are a chain whose outputs feed the next stage. A task per stage keeps the
driver shaped like the pipeline (submit, wait, submit the next), lets Ray retry a stage whose worker died
(`max_retries`) while the stage itself resumes from the checkpoint it keeps in storage, and lets the autoscaler
bring a GPU node up per pending task. TorchTrainer would add a trainer/worker-group layer per style for a world size
of 1. One GPU per style is what this system supports (cluster.train rejects gpus_per_style > 1); a multi-GPU style
would launch `accelerate launch` as a subprocess inside its task, keeping this driver unchanged.

Contract for a stage: `fn(ctx: StageContext) -> dict` (JSON-serialisable). Its outputs and checkpoints live in
`ctx.work_uri` (the stage's `folder`, by default `<root>/runs/<run>/<style>/<stage>`; fstrain.layout names them),
it calls `ctx.resumed(step)` when it picks one up, and `ctx.report(step, total, loss)` as it goes. When it finishes
its output lands in `<work_uri>/stage.json`, beside its outputs, with the `sha256` identities of what it was
made from: the earlier stages' products it consumed and the files no stage made (`Stage.inputs`, say the base
generator). A resubmitted run skips a stage whose marker exists and whose recorded inputs still match; when one
changed (the base generator was replaced, the baseline was retrained) the stage reruns and the log says why:
`[cartoon] baseline rerun: base generator changed (3fa2c1d0… → 91bc7e44…)`. An output may carry `sha256`
({product: hex}, its products' identities), `published_uri` and `metrics`; the summary reports the last of each.

While it runs the driver prints one line per running style every `progress_interval_s`
(`[cartoon] styled 120/600 loss=0.41 eta 2m10s`); at the end a table, and `<root>/runs/<run_id>/summary.json`.
A style whose stage raises (or whose worker dies more than `max_retries` times) is reported failed with its stage
and error; the other styles carry on.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fstrain import layout, provenance
from fstrain.data import storage

StageFolder = Callable[[str, str, str], str]     # (root, run_id, style) -> the folder of the stage's outputs
StageInputs = Callable[[str, str, str], Mapping[str, Any]]   # (root, run_id, style) -> {input name: sha256 or settings}


@dataclass(frozen=True)
class Stage:
    """One step of a style's DAG. `resources` overrides the style's task resources (e.g. a CPU-only publish);
    `folder` names where its outputs and done-marker live (default `<root>/runs/<run>/<style>/<name>`); `inputs`
    gives the sha256 of the files it reads that no earlier stage made (computed by the driver before each submit)."""
    name: str
    fn: Callable[["StageContext"], dict]
    resources: Mapping[str, Any] | None = None
    folder: StageFolder | None = None
    inputs: StageInputs | None = None

    def work_uri(self, root: str, run_id: str, style: str) -> str:
        if self.folder is not None:
            return self.folder(root, run_id, style)
        return layout.stage_work(root, run_id, style, self.name)

    def made_from(self, root: str, run_id: str, style: str, previous: Mapping[str, dict]) -> dict[str, Any]:
        """What the stage's marker records and a rerun compares: its own inputs and the products it consumed."""
        own = dict(self.inputs(root, run_id, style)) if self.inputs is not None else {}
        return {**own, **consumed(previous)}


def consumed(previous: Mapping[str, dict]) -> dict[str, dict]:
    """The identities (`sha256`) of the earlier stages' products, as a stage's marker records them."""
    return {name: dict(output["sha256"]) for name, output in previous.items() if output.get("sha256")}


@dataclass
class StageContext:
    """What a stage function gets: who it is, where to keep state, what came before, how to report."""
    style: str
    stage: str
    root: str
    run_id: str
    attempt: int                      # 1 on the first try, 2 after one retry, ...
    previous: dict[str, dict]         # outputs of this style's earlier stages, by stage name
    work_uri: str = ""                # the stage's folder: its checkpoints, outputs and done-marker live here
    _board: Any = field(default=None, repr=False)

    def report(self, step: int, total: int, loss: float | None = None) -> None:
        if self._board is not None:
            self._board.report.remote(self.style, self.stage, int(step), int(total),
                                      None if loss is None else float(loss))

    def resumed(self, step: int) -> None:
        """Record that this attempt continues from a checkpoint at `step` rather than from scratch."""
        if self._board is not None:
            ray.get(self._board.resumed.remote(self.style, self.stage, int(step)))


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Small actor every stage reports to; the driver reads it to print progress and fill in attempts/resumes."""

    def __init__(self) -> None:
        self.current: dict[str, dict] = {}                 # style -> the latest stage attempt's progress
        self.history: dict[str, dict[str, dict]] = {}      # style -> stage -> attempts, resumes, nodes, pids

    def start(self, style: str, stage: str, node_id: str, pid: int) -> int:
        log = self.history.setdefault(style, {}).setdefault(
            stage, {"attempts": 0, "resumed_from": [], "nodes": [], "pids": []})
        log["attempts"] += 1
        log["nodes"].append(node_id)
        log["pids"].append(pid)
        self.current[style] = {"stage": stage, "attempt": log["attempts"], "step": None, "total": None,
                               "loss": None, "first_step": None, "first_time": None, "pid": pid}
        return log["attempts"]

    def report(self, style: str, stage: str, step: int, total: int, loss: float | None) -> None:
        cur = self.current.get(style)
        if cur is None or cur["stage"] != stage:
            return
        now = time.time()
        if cur["first_step"] is None:
            cur["first_step"], cur["first_time"] = step, now
        cur.update(step=step, total=total, loss=loss, time=now)

    def resumed(self, style: str, stage: str, step: int) -> None:
        self.history[style][stage]["resumed_from"].append(step)

    def snapshot(self) -> dict:
        return {"current": self.current, "history": self.history}


@ray.remote
def _run_stage(stage: Stage, style: str, root: str, run_id: str, previous: dict[str, dict], inputs: dict[str, Any],
               board: Any) -> dict:
    """Body of every stage task: register the attempt, run the stage, persist its output as the done marker."""
    from kernels.ops import announcements, quiet_routes

    quiet_routes()   # each worker would repeat the kernel routing line per stage; the driver prints it once per job
    node_id = ray.get_runtime_context().get_node_id()
    attempt = ray.get(board.start.remote(style, stage.name, node_id, os.getpid()))
    ctx = StageContext(style=style, stage=stage.name, root=root, run_id=run_id, attempt=attempt,
                       previous=previous, work_uri=stage.work_uri(root, run_id, style), _board=board)
    started = time.time()
    output = stage.fn(ctx)
    if output is None:
        output = {}
    if not isinstance(output, dict):
        raise TypeError(f"stage {stage.name!r} of {style!r} returned {type(output).__name__}; it must return a dict")
    record = {"output": output, "inputs": inputs, "run_s": time.time() - started, "node_id": node_id,
              "finished_at": time.time()}
    storage.write_json(layout.stage_marker(ctx.work_uri), record)
    return {**record, "kernels": announcements()}


@dataclass
class StageRecord:
    name: str
    status: str = "not_run"          # ok | skipped (done by an earlier run) | failed | not_run
    attempts: int = 0
    resumed_from: list[int] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    wall_s: float = 0.0              # submit -> result, including waiting for a node and retries
    output: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class StyleSummary:
    style: str
    status: str = "pending"          # ok | failed
    wall_s: float = 0.0
    published_uri: str | None = None
    metrics: dict = field(default_factory=dict)
    failed_stage: str | None = None
    error: str | None = None
    stages: list[StageRecord] = field(default_factory=list)


@dataclass
class Summary:
    run_id: str
    root: str
    wall_s: float
    styles: dict[str, StyleSummary]

    @property
    def ok(self) -> bool:
        return all(s.status == "ok" for s in self.styles.values())

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        rows = [("style", "status", "stages", "attempts", "resumed", "wall", "published / error")]
        for s in self.styles.values():
            stages = " ".join(f"{r.name}:{r.status}" for r in s.stages)
            attempts = " ".join(str(r.attempts) for r in s.stages)
            resumed = " ".join(f"{r.name}@{','.join(map(str, r.resumed_from))}" for r in s.stages
                               if r.resumed_from) or "-"
            last = (s.published_uri or "-") if s.status == "ok" else f"{s.failed_stage}: {s.error}"
            rows.append((s.style, s.status, stages, attempts, resumed, format_duration(s.wall_s), last))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(style: str, current: dict | None, stage: str | None = None, now: float | None = None) -> str:
    """`[cartoon] styled 120/600 loss=0.41 eta 2m10s`; the ETA uses this attempt's rate so a resume is not skewed.

    `current` is the style's latest report; when it is absent or about an earlier stage than `stage` (the one
    submitted), the task has not started yet: it waits for resources, e.g. for the autoscaler to add a GPU node.
    """
    if current is None or (stage is not None and current["stage"] != stage):
        return f"[{style}]{' ' + stage if stage else ''} waiting for resources"
    head = f"[{style}] {current['stage']}"
    if current.get("attempt", 1) > 1:
        head += f" (attempt {current['attempt']})"
    if current.get("step") is None:
        return f"{head} starting"
    line = f"{head} {current['step']}/{current['total']}"
    if current.get("loss") is not None:
        line += f" loss={current['loss']:.3g}"
    done = current["step"] - current["first_step"]
    elapsed = (current.get("time") or now or time.time()) - current["first_time"]
    if done > 0 and elapsed > 0:
        line += f" eta {format_duration((current['total'] - current['step']) * elapsed / done)}"
    return line


def _error_text(exc: BaseException) -> str:
    """The stage's own exception when Ray wrapped it, else Ray's (e.g. the worker died too often)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"


def _print(line: str) -> None:
    print(line, flush=True)   # flushed so `ray job logs -f` shows it as it happens


class _StyleRun:
    """Driver-side state of one style's chain."""

    def __init__(self, style: str, stages: Sequence[Stage]) -> None:
        self.summary = StyleSummary(style=style, stages=[StageRecord(s.name) for s in stages])
        self.next_index = 0
        self.previous: dict[str, dict] = {}
        self.started = time.time()
        self.submitted_at = 0.0


def run_styles(styles: Sequence[str], stages: Sequence[Stage], *, root: str, run_id: str,
               resources_per_style: Mapping[str, Any], max_retries: int = 3, progress_interval_s: float = 10.0,
               log: Callable[[str], None] = _print) -> Summary:
    """Run every style's stage chain in parallel on the current Ray (starting a local one when none is up).

    `resources_per_style` are Ray task options for each stage: `num_gpus`, `num_cpus`, `memory`, `resources`.
    Returns the summary (also printed and written to `<root>/runs/<run_id>/summary.json`).
    """
    if not styles:
        raise ValueError("run_styles needs at least one style")
    if len(set(styles)) != len(styles):
        raise ValueError(f"duplicate styles in {list(styles)}")
    names = [s.name for s in stages]
    if not stages or len(set(names)) != len(names):
        raise ValueError(f"stages must be non-empty with unique names, got {names}")
    if not ray.is_initialized():
        ray.init()   # RAY_ADDRESS (set inside `ray job submit`) or a fresh local Ray
    started = time.time()
    board = ProgressBoard.options(
        # Pinned to the driver's node: a GPU worker node may be scaled away under it.
        scheduling_strategy=NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)).remote()
    runs = {style: _StyleRun(style, stages) for style in styles}
    pending: dict[ray.ObjectRef, str] = {}

    def advance(run: _StyleRun) -> None:
        """Submit the style's next unfinished stage, skipping those an earlier run already finished."""
        while run.next_index < len(stages):
            stage = stages[run.next_index]
            record = run.summary.stages[run.next_index]
            style = run.summary.style
            done_uri = layout.stage_marker(stage.work_uri(root, run_id, style))
            try:
                inputs = stage.made_from(root, run_id, style, run.previous)
            except Exception as exc:   # an input that cannot be read fails this style's stage, not the whole job
                record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
                run.summary.failed_stage, run.summary.error = stage.name, record.error
                log(f"[{style}] {stage.name} FAILED: {record.error}")
                finish(run, "failed")
                return
            if storage.exists(done_uri):
                done = storage.read_json(done_uri)
                stale = provenance.changes(done.get("inputs") or {}, inputs)
                if not stale:
                    record.status, record.output = "skipped", done["output"]
                    run.previous[stage.name] = record.output
                    log(f"[{style}] {stage.name} already done in run {run_id}; skipping")
                    run.next_index += 1
                    continue
                log(f"[{style}] {stage.name} rerun: {'; '.join(stale)}")
            options = dict(resources_per_style if stage.resources is None else stage.resources)
            ref = _run_stage.options(max_retries=max_retries, retry_exceptions=False,
                                     name=f"{run.summary.style}:{stage.name}", **options).remote(
                stage, run.summary.style, root, run_id, dict(run.previous), inputs, board)
            pending[ref] = run.summary.style
            run.submitted_at = time.time()
            return
        finish(run, "ok")

    def finish(run: _StyleRun, status: str) -> None:
        s = run.summary
        s.status, s.wall_s = status, time.time() - run.started
        for record in s.stages:
            s.published_uri = record.output.get("published_uri", s.published_uri)
            s.metrics = record.output.get("metrics", s.metrics)
        if status == "ok":
            log(f"[{s.style}] done in {format_duration(s.wall_s)} -> {s.published_uri or 'no published URI'}")

    try:
        for run in runs.values():
            advance(run)
        _drive(runs, stages, pending, advance, finish, board, progress_interval_s, log)
        _fill_attempts(runs, _snapshot(board)["history"])
    finally:
        ray.kill(board)
    summary = Summary(run_id=run_id, root=root, wall_s=time.time() - started,
                      styles={style: runs[style].summary for style in styles})
    log(summary.table())
    storage.write_json(layout.run_summary(root, run_id), summary.to_dict())
    log(f"summary: {layout.run_summary(root, run_id)}")
    return summary


def _drive(runs: dict[str, _StyleRun], stages: Sequence[Stage], pending: dict, advance: Callable,
           finish: Callable, board: Any, progress_interval_s: float, log: Callable[[str], None]) -> None:
    """Wait for stage results, chain the next stage, and print one progress line per running style per interval."""
    last_print = time.time()
    kernel_lines: set[str] = set()      # said once per job, whichever worker and stage met it
    while pending:
        timeout = max(0.0, progress_interval_s - (time.time() - last_print))
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
        for ref in ready:
            run = runs[pending.pop(ref)]
            record = run.summary.stages[run.next_index]
            record.wall_s = time.time() - run.submitted_at
            try:
                result = ray.get(ref)
            except Exception as exc:   # the stage raised, or its worker died more than max_retries times
                record.status, record.error = "failed", _error_text(exc)
                run.summary.failed_stage, run.summary.error = record.name, record.error
                log(f"[{run.summary.style}] {record.name} FAILED: {record.error}")
                print(f"[{run.summary.style}] {record.name} traceback:\n{exc}", file=sys.stderr, flush=True)
                finish(run, "failed")
                continue
            for line in result.get("kernels", []):
                if line not in kernel_lines:
                    kernel_lines.add(line)
                    log(f"kernels: {line}")
            record.status, record.output = "ok", result["output"]
            run.previous[record.name] = record.output
            log(f"[{run.summary.style}] {record.name} done in {format_duration(record.wall_s)}")
            run.next_index += 1
            advance(run)
        if time.time() - last_print >= progress_interval_s and pending:
            current = _snapshot(board)["current"]
            for style in sorted(set(pending.values())):
                log(progress_line(style, current.get(style), stages[runs[style].next_index].name))
            last_print = time.time()


def _snapshot(board: Any) -> dict:
    try:
        return ray.get(board.snapshot.remote(), timeout=30)
    except Exception:   # progress is best effort; never let it stop the run
        traceback.print_exc(file=sys.stderr)
        return {"current": {}, "history": {}}


def _fill_attempts(runs: dict[str, _StyleRun], history: dict[str, dict[str, dict]]) -> None:
    for style, run in runs.items():
        for record in run.summary.stages:
            log = history.get(style, {}).get(record.name)
            if log:
                record.attempts, record.resumed_from, record.nodes = (
                    log["attempts"], log["resumed_from"], log["nodes"])
