"""Ray fixtures and helpers for tests, plus a small real checkpointing stage for exercising cluster.pipeline.

Fixtures (how to use them without two Rays fighting):
- `ray_head` (session): a real `ray start --head` (4 CPUs, dashboard on 127.0.0.1, free ports, own temp dir) in its
  own processes. Talk to it with `submit_job(ray_head, ...)` (the `ray job submit` CLI) or, in-process,
  `with ray_head.connect(): ...`. At session end only its own processes are stopped (cluster.local.stop).
- `ray_local` (module): an in-process `ray.init(num_cpus=2, include_dashboard=False)` for tests that only need
  tasks/actors. Workers see the repo and tests/ on PYTHONPATH so stages defined here unpickle.
- A process holds one in-process Ray at a time: never use `ray_local` and `ray_head.connect()` (or a
  `cluster.local.fake_multinode_cluster(...).connect()`) in the same test; both refuse if Ray is already up.
  `ray_head` itself is out-of-process, so it coexists with everything.

Auth: every cluster here runs with token auth and its own token file (see cluster/local.py); `ray_local` does the
same so nothing writes ~/.ray/auth_token.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from cluster.local import LocalRay, local_head, make_auth_env, ray_auth_applied
from fstrain.data import storage

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
RAY_CLI = str(Path(sys.executable).parent / "ray")

__all__ = ["ray_head", "ray_local", "submit_job", "JobResult", "CountingStage", "expected_value",
           "kill_when_pid_file_appears"]


def short_tmp_dir(prefix: str) -> Path:
    # Ray's unix socket paths must stay under ~107 bytes, so pytest's long tmp_path is not an option.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalRay]:
    state_dir = short_tmp_dir("rh-")
    with local_head(state_dir, num_cpus=4) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray
    if ray.is_initialized():
        raise RuntimeError("ray_local: Ray is already initialised in this process (see tests/support/ray_cluster.py)")
    state_dir = short_tmp_dir("rl-")
    with ray_auth_applied(make_auth_env(state_dir)):
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(state_dir / "t"),
                 runtime_env={"env_vars": {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{TESTS_DIR}"}})
        try:
            yield
        finally:
            ray.shutdown()


@dataclass
class JobResult:
    job_id: str
    status: str          # SUCCEEDED | FAILED | STOPPED | ...
    logs: str


def submit_job(cluster: LocalRay, entrypoint: Sequence[str], *, working_dir: Path | str = REPO_ROOT,
               runtime_env_json: str | None = None, timeout_s: float = 300.0) -> JobResult:
    """`ray job submit --working-dir ...` against `cluster` with its token, wait for the end, return status + logs."""
    env = cluster.client_env()
    job_id = f"test-{uuid.uuid4().hex[:10]}"
    cmd = [RAY_CLI, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", job_id, "--no-wait",
           "--working-dir", str(working_dir)]
    if runtime_env_json:
        cmd += ["--runtime-env-json", runtime_env_json]
    _run_cli(cmd + ["--", *entrypoint], env, 120)
    try:
        # --follow returns when the job reaches a terminal state.
        logs = _run_cli([RAY_CLI, "job", "logs", "--address", cluster.dashboard_url, "--follow", job_id],
                        env, timeout_s)
    except subprocess.TimeoutExpired:
        _run_cli([RAY_CLI, "job", "stop", "--address", cluster.dashboard_url, job_id], env, 60, check=False)
        raise
    status_out = _run_cli([RAY_CLI, "job", "status", "--address", cluster.dashboard_url, job_id], env, 60)
    return JobResult(job_id=job_id, status=_parse_job_status(job_id, status_out), logs=logs)


def _parse_job_status(job_id: str, text: str) -> str:
    """The CLI words terminal states ("Job 'x' succeeded") unlike the others ("Status for job 'x': RUNNING")."""
    for pattern, status in ((f"Job '{job_id}' succeeded", "SUCCEEDED"), (f"Job '{job_id}' failed", "FAILED"),
                            (f"Job '{job_id}' was stopped", "STOPPED")):
        if pattern in text:
            return status
    match = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
    if match is None:
        raise AssertionError(f"could not read the status of job {job_id} from:\n{text}")
    return match.group(1)


def _run_cli(cmd: list[str], env: dict[str, str], timeout_s: float, check: bool = True) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# A real stage for pipeline tests: deterministic arithmetic that checkpoints to storage and resumes from it.

def _step(value: int, step: int) -> int:
    return (value * 31 + step) % 1_000_003


def _start_value(style: str, previous: dict[str, dict]) -> int:
    for output in reversed(list(previous.values())):
        if "value" in output:
            return int(output["value"])
    return sum(map(ord, style))


def expected_value(style: str, steps_per_stage: Sequence[int]) -> int:
    """What a chain of CountingStages yields for `style` when nothing goes wrong."""
    value = sum(map(ord, style))
    for steps in steps_per_stage:
        for step in range(1, steps + 1):
            value = _step(value, step)
    return value


@dataclass
class CountingStage:
    """`steps` steps of arithmetic; checkpoint every `checkpoint_every` to `<work_uri>/checkpoints/latest.json`.

    fail_style: that style raises at `fail_at_step` (an application error: not retried).
    pid_dir: on attempt 1 at `pid_at_step` (after checkpointing) write `<pid_dir>/<style>-<stage>.pid` and wait
             up to 60 s to be killed from outside, so a test can kill the worker mid-run.
    publish: write `<root>/styles/<style>/generator.json` and return it as `published_uri`.
    """
    steps: int = 8
    step_s: float = 0.05
    checkpoint_every: int = 2
    fail_style: str | None = None
    fail_at_step: int = 3
    pid_dir: str | None = None
    pid_at_step: int = 4
    publish: bool = False

    def __call__(self, ctx) -> dict:
        checkpoint = storage.join(ctx.work_uri, "checkpoints", "latest.json")
        state = {"step": 0, "value": _start_value(ctx.style, ctx.previous)}
        if storage.exists(checkpoint):
            state = storage.read_json(checkpoint)
            ctx.resumed(state["step"])
        first = state["step"]
        value = state["value"]
        for step in range(first + 1, self.steps + 1):
            time.sleep(self.step_s)
            value = _step(value, step)
            if ctx.style == self.fail_style and step == self.fail_at_step:
                raise RuntimeError(f"injected failure in {ctx.style}/{ctx.stage} at step {step}")
            if step % self.checkpoint_every == 0:
                storage.write_json(checkpoint, {"step": step, "value": value})
            ctx.report(step, self.steps, loss=1.0 / step)
            if self.pid_dir and ctx.attempt == 1 and step == self.pid_at_step:
                Path(self.pid_dir, f"{ctx.style}-{ctx.stage}.pid").write_text(str(os.getpid()))
                time.sleep(60)
        output = {"value": value, "steps_run": self.steps - first, "metrics": {"loss": 1.0 / self.steps},
                  "sha256": {"value": hashlib.sha256(repr(value).encode()).hexdigest()}}   # its product's identity
        if self.publish:
            uri = storage.join(ctx.root, "styles", ctx.style, "generator.json")
            storage.write_json(uri, {"value": value, "run_id": ctx.run_id})
            output["published_uri"] = uri
        return output


def kill_when_pid_file_appears(path: Path, timeout_s: float = 120.0) -> int:
    """Wait for a stage's pid file, SIGKILL that worker, return its pid (run in a thread beside the driver)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no pid file {path} within {timeout_s:.0f}s")
        time.sleep(0.1)
    pid = int(path.read_text())
    os.kill(pid, signal.SIGKILL)
    return pid


if __name__ == "__main__":
    # A job entrypoint for tests: `python -m support.ray_cluster ROOT RUN_ID STYLE[,STYLE...]` runs two counting
    # stages per style through cluster.pipeline on the cluster the job was submitted to.
    from cluster.pipeline import Stage, run_styles
    root, run_id, styles = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    summary = run_styles(styles, [Stage("baseline", CountingStage(steps=6, step_s=0.3)),
                                  Stage("styled", CountingStage(steps=6, step_s=0.3, publish=True))],
                         root=root, run_id=run_id, resources_per_style={"num_cpus": 1}, progress_interval_s=1.0)
    sys.exit(0 if summary.ok else 1)
