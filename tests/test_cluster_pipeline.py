"""cluster.pipeline on an in-process Ray: parallel style chains, failure isolation, kill + resume, rerun skipping."""
from __future__ import annotations

import threading

import pytest

from cluster.pipeline import Stage, format_duration, progress_line, run_styles
from fstrain import layout
from fstrain.data import storage
from fstrain.provenance import sha256_uri
from support.ray_cluster import CountingStage, expected_value, kill_when_pid_file_appears

CPU = {"num_cpus": 1}


def two_stages(**baseline_kwargs) -> list[Stage]:
    return [Stage("baseline", CountingStage(steps=6, **baseline_kwargs)),
            Stage("styled", CountingStage(steps=4, publish=True))]


def test_styles_run_their_chains_and_publish(ray_local, tmp_path):
    root, lines = str(tmp_path / "root"), []
    styles = ["cartoon", "anime", "impasto"]
    summary = run_styles(styles, two_stages(step_s=0.1), root=root, run_id="r1", resources_per_style=CPU,
                         progress_interval_s=0.3, log=lines.append)

    assert summary.ok and list(summary.styles) == styles
    for style in styles:
        s = summary.styles[style]
        value = expected_value(style, [6, 4])
        assert [r.status for r in s.stages] == ["ok", "ok"]
        assert [r.attempts for r in s.stages] == [1, 1]
        assert s.stages[1].output["value"] == value          # the styled stage started from the baseline's output
        assert s.published_uri == storage.join(root, "styles", style, "generator.json")
        assert storage.read_json(s.published_uri)["value"] == value
        assert s.metrics == {"loss": 0.25}
    written = storage.read_json(layout.run_summary(root, "r1"))
    assert written["styles"]["anime"]["status"] == "ok"
    assert written["styles"]["anime"]["stages"][0]["name"] == "baseline"
    assert written["styles"]["anime"]["published_uri"].endswith("styles/anime/generator.json")
    # Progress lines while running, and the table at the end.
    assert any(line.startswith("[cartoon] baseline ") and "/6" in line for line in lines)
    table = next(line for line in lines if line.startswith("style"))
    assert "cartoon" in table and "baseline:ok styled:ok" in table


def test_a_failing_style_is_reported_and_the_others_finish(ray_local, tmp_path):
    root, lines = str(tmp_path / "root"), []
    summary = run_styles(["cartoon", "anime", "fantasy"], two_stages(fail_style="anime"), root=root, run_id="r2",
                         resources_per_style=CPU, progress_interval_s=5, log=lines.append)

    assert not summary.ok
    anime = summary.styles["anime"]
    assert anime.status == "failed" and anime.failed_stage == "baseline"
    assert anime.error == "RuntimeError: injected failure in anime/baseline at step 3"
    assert [r.status for r in anime.stages] == ["failed", "not_run"]
    assert anime.stages[0].attempts == 1            # an exception in the stage is not retried, only dead workers
    assert anime.published_uri is None
    for style in ("cartoon", "fantasy"):
        assert summary.styles[style].status == "ok"
        assert storage.exists(storage.join(root, "styles", style, "generator.json"))
    assert not storage.exists(storage.join(root, "styles", "anime", "generator.json"))
    written = storage.read_json(layout.run_summary(root, "r2"))["styles"]["anime"]
    assert (written["status"], written["failed_stage"]) == ("failed", "baseline")
    assert "[anime] baseline FAILED: RuntimeError: injected failure" in "\n".join(lines)


def test_a_killed_worker_is_retried_and_the_stage_resumes_from_its_checkpoint(ray_local, tmp_path):
    root, pid_dir = str(tmp_path / "root"), tmp_path / "pids"
    pid_dir.mkdir()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.append(
        kill_when_pid_file_appears(pid_dir / "cartoon-baseline.pid")), daemon=True)
    killer.start()
    stages = two_stages(pid_dir=str(pid_dir), pid_at_step=4)
    summary = run_styles(["cartoon"], stages, root=root, run_id="r3", resources_per_style=CPU,
                         max_retries=2, progress_interval_s=5, log=lambda _: None)
    killer.join(timeout=5)

    assert killed, "the test never killed the worker"
    cartoon = summary.styles["cartoon"]
    assert cartoon.status == "ok"
    baseline = cartoon.stages[0]
    assert baseline.attempts == 2
    assert baseline.resumed_from == [4]             # the checkpoint written at step 4, before the kill
    assert baseline.output["steps_run"] == 2        # only steps 5..6 ran again
    assert cartoon.stages[1].output["value"] == expected_value("cartoon", [6, 4])   # same as an unbroken run
    written = storage.read_json(layout.run_summary(root, "r3"))["styles"]["cartoon"]["stages"][0]
    assert (written["attempts"], written["resumed_from"]) == (2, [4])


def test_a_rerun_with_the_same_run_id_skips_finished_stages(ray_local, tmp_path):
    root = str(tmp_path / "root")
    failing = [Stage("baseline", CountingStage(steps=6)),
               Stage("styled", CountingStage(steps=4, publish=True, fail_style="cartoon"))]
    first = run_styles(["cartoon"], failing, root=root, run_id="r4", resources_per_style=CPU, log=lambda _: None)
    assert first.styles["cartoon"].failed_stage == "styled"

    second = run_styles(["cartoon"], two_stages(), root=root, run_id="r4", resources_per_style=CPU,
                        log=lambda _: None)
    cartoon = second.styles["cartoon"]
    assert [r.status for r in cartoon.stages] == ["skipped", "ok"]
    assert cartoon.stages[0].attempts == 0
    assert cartoon.stages[1].output["value"] == expected_value("cartoon", [6, 4])


def test_a_changed_earlier_product_reruns_the_later_stages_and_says_why(ray_local, tmp_path):
    """Markers sit beside their stage's outputs and record what they consumed: a retrained baseline reruns styled."""
    root, lines = str(tmp_path / "root"), []
    styled_folder = lambda root, run_id, style: storage.join(root, "elsewhere", run_id, style)  # noqa: E731
    stages = [Stage("baseline", CountingStage(steps=6)),
              Stage("styled", CountingStage(steps=4), folder=styled_folder)]
    first = run_styles(["cartoon"], stages, root=root, run_id="r5", resources_per_style=CPU, log=lines.append)
    baseline_folder = layout.stage_work(root, "r5", "cartoon", "baseline")
    marker = storage.read_json(layout.stage_marker(styled_folder(root, "r5", "cartoon")))
    assert marker["inputs"] == {"baseline": first.styles["cartoon"].stages[0].output["sha256"]}
    assert storage.exists(layout.stage_marker(baseline_folder))
    assert not storage.exists(layout.stage_marker(layout.stage_work(root, "r5", "cartoon", "styled")))

    # Unchanged: both skipped. Baseline retrained (its folder cleared, one more step): styled reruns, saying why.
    again = run_styles(["cartoon"], stages, root=root, run_id="r5", resources_per_style=CPU, log=lines.append)
    assert [r.status for r in again.styles["cartoon"].stages] == ["skipped", "skipped"]
    storage.delete_prefix(baseline_folder)
    lines.clear()
    retrained = [Stage("baseline", CountingStage(steps=7)), stages[1]]
    third = run_styles(["cartoon"], retrained, root=root, run_id="r5", resources_per_style=CPU, log=lines.append)
    assert [r.status for r in third.styles["cartoon"].stages] == ["ok", "ok"]
    old = first.styles["cartoon"].stages[0].output["sha256"]["value"]
    new = third.styles["cartoon"].stages[0].output["sha256"]["value"]
    assert f"[cartoon] styled rerun: baseline.value changed ({old[:8]}… → {new[:8]}…)" in lines


def test_an_input_that_cannot_be_read_fails_its_style_only_and_a_changed_one_reruns_the_stage(ray_local, tmp_path):
    """Stage.inputs (the files no earlier stage made) are recorded in the marker; a changed one reruns the stage
    saying why, and one that cannot be read fails that style's stage while the other styles finish."""
    root, lines = str(tmp_path / "root"), []
    base = tmp_path / "base.bin"
    base.write_bytes(b"first")

    def base_identity(root: str, run_id: str, style: str) -> dict:
        if style == "anime":
            raise FileNotFoundError("models.base_generator: /nowhere/g.pt: weights file not found")
        return {"base_generator": sha256_uri(str(base))}

    stages = [Stage("baseline", CountingStage(steps=2), inputs=base_identity),
              Stage("styled", CountingStage(steps=2, publish=True))]
    first = run_styles(["cartoon", "anime"], stages, root=root, run_id="r6", resources_per_style=CPU,
                       log=lines.append)
    assert first.styles["cartoon"].status == "ok"
    anime = first.styles["anime"]
    assert (anime.status, anime.failed_stage) == ("failed", "baseline")
    assert anime.error == "FileNotFoundError: models.base_generator: /nowhere/g.pt: weights file not found"
    assert [r.status for r in anime.stages] == ["failed", "not_run"]
    old = sha256_uri(str(base))
    marker = storage.read_json(layout.stage_marker(layout.stage_work(root, "r6", "cartoon", "baseline")))
    assert marker["inputs"] == {"base_generator": old}

    base.write_bytes(b"second")
    lines.clear()
    again = run_styles(["cartoon"], stages, root=root, run_id="r6", resources_per_style=CPU, log=lines.append)
    # baseline reran; its product came out the same (CountingStage ignores the file), so styled was reused.
    assert [r.status for r in again.styles["cartoon"].stages] == ["ok", "skipped"]
    new = sha256_uri(str(base))
    assert f"[cartoon] baseline rerun: base generator changed ({old[:8]}… → {new[:8]}…)" in lines


def test_progress_line_and_durations():
    now = 1000.0
    current = {"stage": "styled", "attempt": 1, "step": 120, "total": 600, "loss": 0.41,
               "first_step": 20, "first_time": now - 100, "time": now}
    # 100 steps in 100 s, 480 to go.
    assert progress_line("cartoon", current) == "[cartoon] styled 120/600 loss=0.41 eta 8m00s"
    assert progress_line("anime", None) == "[anime] waiting for resources"
    # The report is about the finished baseline while the styled task waits for a node.
    assert progress_line("cartoon", {**current, "stage": "baseline"}, "styled") == "[cartoon] styled waiting for resources"
    assert progress_line("anime", {**current, "step": None, "attempt": 2}) == "[anime] styled (attempt 2) starting"
    assert [format_duration(s) for s in (5, 130, 7300)] == ["5s", "2m10s", "2h01m"]


def test_bad_arguments_are_refused(tmp_path):
    stage = Stage("baseline", CountingStage())
    with pytest.raises(ValueError, match="duplicate styles"):
        run_styles(["a", "a"], [stage], root=str(tmp_path), run_id="x", resources_per_style=CPU)
    with pytest.raises(ValueError, match="unique names"):
        run_styles(["a"], [stage, stage], root=str(tmp_path), run_id="x", resources_per_style=CPU)


def _runs_the_kernels(ctx) -> dict:
    """A stage that meets the kernel routing (CPU tensors: the reference ops), as every real stage does."""
    import torch

    import kernels

    kernels.bias_act(torch.randn(1, 2, 4, 4), torch.zeros(2))
    kernels.upfirdn2d(torch.randn(1, 2, 4, 4), torch.ones(2, 2))
    return {}


def test_kernel_routing_line_is_printed_once_per_job(ray_local, tmp_path):
    lines = []
    stages = [Stage("baseline", _runs_the_kernels), Stage("styled", _runs_the_kernels)]
    summary = run_styles(["cartoon", "anime"], stages, root=str(tmp_path / "root"), run_id="k1",
                         resources_per_style=CPU, log=lines.append)
    assert summary.ok
    said = [line for line in lines if line.startswith("kernels:")]
    # once for 2 styles x 2 stages (it was once per worker, op and stage)
    assert said == ["kernels: using the reference ops (tensors on cpu; the CUDA kernels need a GPU)"], lines
