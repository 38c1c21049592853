"""cluster.train: the five-style DAG on real Ray with the real fine-tuning, pairs and publish stages."""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path

import pytest

from cluster.demo import prepare_world
from cluster.train import STAGES, main, style_stages, train_styles
from fstrain import layout
from fstrain.config import load_config
from fstrain.data import storage
from fstrain.models.checkpoints import load_generator
from fstrain.settings import PipelineConfig
from support.cluster_stages import PauseOnFirstAttempt
from support.ray_cluster import kill_when_pid_file_appears, short_tmp_dir, submit_job

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "configs" / "tiny_five_styles.yaml"
FIVE = ("cartoon", "anime", "fantasy", "illustration", "impasto")


@pytest.mark.slow
def test_ray_job_submit_trains_five_styles_and_publishes_to_s3(ray_head, s3_root, s3_server):
    prepare_world(s3_root, images_per_style=8)
    # The job's workers reach the test S3 server through the standard AWS variables (fake test credentials).
    env_vars = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION") if k in os.environ}
    result = submit_job(ray_head, ["python", "-m", "cluster.train", "configs/tiny_five_styles.yaml",
                                   "--root", s3_root, "--run-id", "job1"],
                        runtime_env_json=json.dumps({"env_vars": env_vars}), timeout_s=900)
    assert result.status == "SUCCEEDED", result.logs[-4000:]
    # One progress/summary line per style in the job log.
    for style in FIVE:
        assert f"[{style}] done in" in result.logs
    summary = storage.read_json(layout.run_summary(s3_root, "job1"))
    assert set(summary["styles"]) == set(FIVE)
    for style in FIVE:
        entry = summary["styles"][style]
        assert entry["status"] == "ok", entry
        assert [s["name"] for s in entry["stages"]] == list(STAGES)
        assert entry["published_uri"] == layout.published_generator(s3_root, style)
        loaded = load_generator(entry["published_uri"])
        assert loaded.metadata["style"] == style and loaded.metadata["mode"] == "sc+pc"
        assert loaded.generator.size == 32


@pytest.mark.slow
def test_killed_fine_tune_worker_resumes_and_a_failing_style_does_not_stop_others(ray_local, tmp_path):
    root = str(tmp_path / "root")
    prepare_world(root, images_per_style=8, styles=("cartoon",))     # anime has no dataset: it must fail alone
    config = load_config(str(TINY), PipelineConfig)
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, progress_interval_s=2.0))
    pid_dir = short_tmp_dir("pids-")
    stages = style_stages(dataclasses.replace(config, root=root))
    styled = stages[STAGES.index("styled")]
    # Kill the styled fine-tune at step 12 of 20; its last checkpoint is step 10 (checkpoint_every: 10).
    stages[STAGES.index("styled")] = dataclasses.replace(
        styled, fn=PauseOnFirstAttempt(styled.fn, str(pid_dir), pause_at_step=12))
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.append(
        kill_when_pid_file_appears(pid_dir / "cartoon-styled.pid", timeout_s=300)), daemon=True)
    killer.start()
    lines: list[str] = []
    summary = train_styles(config, root=root, run_id="kill1", styles=["cartoon", "anime"], stages=stages,
                           log=lines.append)
    killer.join(timeout=5)
    assert killed, "the styled worker was never killed"

    cartoon = summary.styles["cartoon"]
    assert cartoon.status == "ok", "\n".join(lines)
    styled_record = next(s for s in cartoon.stages if s.name == "styled")
    assert styled_record.attempts == 2
    assert styled_record.resumed_from == [10]
    assert styled_record.output["final_step"] == 20 and styled_record.output["resumed_from"] == 10
    assert storage.exists(layout.published_generator(root, "cartoon"))
    # Each stage's marker sits beside its outputs; the run's pairs are its own.
    for folder in (layout.mode_run(root, "kill1", "cartoon", "baseline"), layout.pairs(root, "kill1", "cartoon"),
                   layout.mode_run(root, "kill1", "cartoon", "sc+pc"), layout.published_style(root, "cartoon")):
        assert storage.exists(layout.stage_marker(folder)), folder
    assert storage.list_uris(layout.pairs(root, "kill1", "cartoon", 3), suffixes=".provenance.json")

    anime = summary.styles["anime"]
    assert anime.status == "failed" and anime.failed_stage == "baseline"
    assert "datasets/anime" in anime.error and "fstrain.ingest" in anime.error

    on_disk = storage.read_json(layout.run_summary(root, "kill1"))
    assert on_disk["styles"]["cartoon"]["stages"][2]["resumed_from"] == [10]
    assert any(line.startswith("[cartoon] styled") for line in lines)     # per-style progress lines


def test_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    config_text = TINY.read_text().replace("constrained_mode: sc+pc", "constrained_mode: baseline")
    bad.write_text(config_text)
    assert main([str(bad), "--root", str(tmp_path)]) == 2
    assert "cluster.constrained_mode" in capsys.readouterr().err
    assert main([str(TINY)]) == 2
    assert "no storage root" in capsys.readouterr().err
    assert main([str(TINY), "--root", str(tmp_path), "--styles", "cartoon,watercolour"]) == 2
    assert "watercolour" in capsys.readouterr().err
    stray = tmp_path / "stray.yaml"
    stray.write_text(config_text.replace("constrained_mode: baseline", "constrained_mode: sc+pc")
                     .replace("train:\n", "train:\n  pair_level_by_style: {cartoon: 1, watercolor: 2}\n", 1))
    assert main([str(stray), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "train.pair_level_by_style" in err and "watercolor" in err and "Traceback" not in err


def test_a_replaced_base_generator_retrains_the_baseline_and_rebuilds_the_pairs(ray_local, tmp_path):
    """Stage markers record the sha256 of the models each stage read: an unchanged rerun reuses every stage; a new
    base G file retrains G*, rebuilds the pairs from it, retrains G' and republishes, and the log says why."""
    from cluster.demo import TINY_MODEL_ARGS
    from fstrain.models.init import init_models
    from fstrain.provenance import sha256_uri

    root = str(tmp_path / "root")
    prepare_world(root, images_per_style=4, styles=("cartoon",), log=lambda _: None)
    config = load_config(str(TINY), PipelineConfig)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, steps=2, checkpoint_every=2, sample_every=2),
        pairs=dataclasses.replace(config.pairs, levels=[2, 3], optimise_steps=2),
        cluster=dataclasses.replace(config.cluster, baseline_steps=2, progress_interval_s=60.0))
    base_uri = storage.join(layout.models(root), "generator.pt")

    def run(lines: list[str]):
        summary = train_styles(config, root=root, run_id="base1", styles=["cartoon"], log=lines.append)
        assert summary.ok, "\n".join(lines)
        return {record.name: record for record in summary.styles["cartoon"].stages}

    first = run([])
    assert [r.status for r in first.values()] == ["ok"] * 4
    reused_lines: list[str] = []
    assert [r.status for r in run(reused_lines).values()] == ["skipped"] * 4, "\n".join(reused_lines)

    old = sha256_uri(base_uri)
    init_models(tmp_path / "other", **{**TINY_MODEL_ARGS, "seed": 1})      # another base G of the same shape
    storage.write_bytes(base_uri, (tmp_path / "other" / "generator.pt").read_bytes())
    new = sha256_uri(base_uri)
    assert new != old
    lines: list[str] = []
    third = run(lines)
    assert [r.status for r in third.values()] == ["ok"] * 4, "\n".join(lines)
    assert f"[cartoon] baseline rerun: base generator changed ({old[:8]}… → {new[:8]}…)" in lines
    assert third["baseline"].output["sha256"] != first["baseline"].output["sha256"]      # G* retrained from the new G
    assert third["baseline"].output["final_step"] == 2 and third["baseline"].output["resumed_from"] is None
    rebuilt = third["pairs"].output["rebuilt"]
    assert any(reason.startswith("base generator changed") and "baseline generator changed" in reason
               for reason in rebuilt), rebuilt
    assert third["pairs"].output["shards_written"] == third["pairs"].output["shards"] > 0
    marker = storage.read_json(layout.stage_marker(layout.pairs(root, "base1", "cartoon")))
    assert marker["inputs"]["base_generator"] == new
    assert marker["inputs"]["baseline"] == third["baseline"].output["sha256"]
    published = load_generator(layout.published_generator(root, "cartoon"))
    assert published.metadata["inputs"]["base_generator"] == new


def test_an_edited_train_setting_reruns_only_the_stages_it_shapes_and_says_which(ray_local, tmp_path):
    """A fine-tune setting changed between two runs of a job: the constrained fine-tune starts again (its old
    checkpoints were made with the old value) and is republished; the baseline, which that term plays no part in,
    and the pairs are reused. More steps continue the run instead of restarting it."""
    root = str(tmp_path / "root")
    prepare_world(root, images_per_style=4, styles=("cartoon",), log=lambda _: None)
    config = load_config(str(TINY), PipelineConfig)
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, steps=2, checkpoint_every=2, sample_every=2),
        pairs=dataclasses.replace(config.pairs, levels=[3]),
        cluster=dataclasses.replace(config.cluster, baseline_steps=2, progress_interval_s=60.0))

    def run(cfg: PipelineConfig, lines: list[str]):
        summary = train_styles(cfg, root=root, run_id="edit", styles=["cartoon"], log=lines.append)
        assert summary.ok, "\n".join(lines)
        return {record.name: record for record in summary.styles["cartoon"].stages}

    first = run(config, [])
    assert [r.status for r in first.values()] == ["ok"] * 4
    edited = dataclasses.replace(config, train=dataclasses.replace(config.train, lambda_eyes=2.0))
    lines: list[str] = []
    second = run(edited, lines)
    assert [second[s].status for s in STAGES] == ["skipped", "skipped", "ok", "ok"], "\n".join(lines)
    assert "[cartoon] styled rerun: settings.train.lambda_eyes changed (0.0 → 2.0)" in lines
    assert second["styled"].output["resumed_from"] is None and second["styled"].output["final_step"] == 2
    published = load_generator(layout.published_generator(root, "cartoon"))
    assert published.metadata["lambda_eyes"] == 2.0

    longer = dataclasses.replace(edited, train=dataclasses.replace(edited.train, steps=4))
    lines = []
    third = run(longer, lines)
    assert [third[s].status for s in STAGES] == ["skipped", "skipped", "ok", "ok"], "\n".join(lines)
    assert "[cartoon] styled rerun: steps changed (2 → 4)" in lines
    assert third["styled"].output["resumed_from"] == 2 and third["styled"].output["final_step"] == 4
    # A setting only the stylizer reads changes no training stage.
    restyled = dataclasses.replace(longer, stylize=dataclasses.replace(longer.stylize, truncation=0.5))
    assert [r.status for r in run(restyled, []).values()] == ["skipped"] * 4


def test_pairs_stage_builds_every_level_a_style_trains_on():
    from cluster.train import pair_levels
    config = load_config(str(TINY), PipelineConfig)
    config = dataclasses.replace(config, pairs=dataclasses.replace(config.pairs, levels=[3]),
                                 train=dataclasses.replace(config.train, pair_level=3,
                                                           pair_level_by_style={"cartoon": 1}))
    assert pair_levels(config) == [1, 3]
