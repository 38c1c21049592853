"""cluster.local on real Ray processes: token-authenticated job submission, stopping only our own cluster, and the
fake-multinode autoscaler bringing simulated GPU workers up from 0 for five styles and removing them when idle."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from cluster.local import _pid_alive, read_state, start_head
from cluster.pipeline import Stage, run_styles
from fstrain import layout
from fstrain.data import storage
from support.ray_cluster import (REPO_ROOT, RAY_CLI, TESTS_DIR, CountingStage, expected_value, short_tmp_dir,
                                 submit_job)

STYLES = ["cartoon", "anime", "fantasy", "illustration", "impasto"]


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if _pid_alive(p)]


def test_job_submitted_with_the_cluster_token_runs_the_dag(ray_head, tmp_path):
    root = str(tmp_path / "root")
    result = submit_job(ray_head, ["python", "-m", "support.ray_cluster", root, "job1", "cartoon,anime"],
                        runtime_env_json=json.dumps({"env_vars": {"PYTHONPATH": "tests"}}), timeout_s=240)

    assert result.status == "SUCCEEDED", result.logs
    assert "[cartoon] baseline" in result.logs and "/6" in result.logs       # progress lines reach `ray job logs`
    assert "baseline:ok styled:ok" in result.logs                             # the summary table
    summary = storage.read_json(layout.run_summary(root, "job1"))
    assert {s: v["status"] for s, v in summary["styles"].items()} == {"cartoon": "ok", "anime": "ok"}
    assert storage.read_json(storage.join(root, "styles", "anime", "generator.json"))["value"] == \
        expected_value("anime", [6, 6])


def test_job_submission_without_the_token_is_refused(ray_head, tmp_path):
    env = {k: v for k, v in ray_head.client_env().items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)   # no ~/.ray/auth_token to fall back on
    proc = subprocess.run([RAY_CLI, "job", "submit", "--address", ray_head.dashboard_url, "--", "echo", "hi"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Unauthorized" in proc.stdout + proc.stderr


def test_down_stops_exactly_the_cluster_it_started(ray_head):
    head_pids = ray_head.alive_pids()
    other = start_head(short_tmp_dir("rd-"), num_cpus=1, include_dashboard=False)
    other_pids = other.alive_pids()
    assert other_pids and not set(other_pids) & set(head_pids)

    proc = subprocess.run([sys.executable, "-m", "cluster.local", "down", "--state-dir", other.state_dir],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"stopped {len(other_pids)} Ray processes" in proc.stdout
    assert _alive(other_pids) == []
    assert read_state(other.state_dir) is None
    assert _alive(head_pids) == head_pids          # the session's head is untouched


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.mark.slow
def test_fake_multinode_scales_gpu_workers_up_for_five_styles_and_removes_them_when_idle(tmp_path):
    import ray
    state_dir = short_tmp_dir("fm-")
    up = subprocess.run([sys.executable, "-m", "cluster.local", "up", "--gpu-workers-max", "5", "--idle-timeout",
                         "8", "--head-cpus", "1", "--state-dir", str(state_dir)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    cluster = read_state(state_dir)
    try:
        with cluster.connect(runtime_env={"env_vars": {"PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{TESTS_DIR}"}}):
            head_id = ray.get_runtime_context().get_node_id()

            def gpu_workers() -> set[str]:
                return {n["NodeID"] for n in ray.nodes()
                        if n["Alive"] and n["Resources"].get("GPU", 0) > 0}

            assert ray.cluster_resources().get("GPU", 0) == 0 and gpu_workers() == set()
            seen_workers: set[str] = set()
            max_gpus = [0.0]
            stop = threading.Event()

            def sample():
                while not stop.is_set():
                    seen_workers.update(gpu_workers())
                    max_gpus[0] = max(max_gpus[0], ray.cluster_resources().get("GPU", 0))
                    time.sleep(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            stages = [Stage("baseline", CountingStage(steps=6, step_s=0.5)),
                      Stage("styled", CountingStage(steps=4, step_s=0.5, publish=True))]
            summary = run_styles(STYLES, stages, root=str(tmp_path / "root"), run_id="scale",
                                 resources_per_style={"num_gpus": 1, "num_cpus": 1}, progress_interval_s=5)
            stop.set()
            sampler.join(timeout=10)

            assert summary.ok, summary.table()
            assert max_gpus[0] >= 2, f"GPU workers never scaled beyond {max_gpus[0]}"
            ran_on = {node for s in summary.styles.values() for r in s.stages for node in r.nodes}
            assert head_id not in ran_on                     # the head has no GPU: every stage ran on a worker
            assert ran_on <= seen_workers and len(ran_on) >= 2
            # Idle GPU workers are removed after the 8 s idle timeout.
            _wait_for(lambda: not gpu_workers() and ray.cluster_resources().get("GPU", 0) == 0, 120,
                      "idle GPU workers to be removed")
    finally:
        pids = cluster.alive_pids()
        subprocess.run([sys.executable, "-m", "cluster.local", "down", "--state-dir", str(state_dir)],
                       cwd=REPO_ROOT, capture_output=True, timeout=120)
        assert _alive(pids) == []
