"""A user one step off the README's path: every bad input is refused by every command the same way.

Each case runs the command as a subprocess, as a user meets it, and checks the exit code of the one rule
(fstrain/cli.py: 0 done, 1 the work failed, 2 usage or configuration error, 3 batch finished with item errors), a
short `error:` message naming the flag/key/file and value, no traceback, and that nothing was written.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.portraits import write_portraits
from support.s3_server import free_port

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the repo root; `env` values override the environment, None removes a variable."""
    environ = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={k: v for k, v in environ.items() if v is not None})


def refusal(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The error message of a refused command: the expected exit code, at most two lines, no traceback."""
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("error: "))
    message = lines[start:]
    assert 1 <= len(message) <= 2, proc.stderr
    return "\n".join(message)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []


def write_config(path: Path, tiny_models, **sections: dict) -> str:
    """A pipeline YAML pointing at the session's tiny models (absolute paths), with section overrides."""
    import yaml

    t = tiny_models
    config = {"models": {"base_generator": t.generator, "encoder_wplus": t.encoder_wplus,
                         "encoder_zplus": t.encoder_zplus, "identity": t.identity,
                         "lpips_backbone": t.lpips_backbone, "lpips_net": t.lpips_net},
              "data": {"image_size": t.size, "batch_size": 2, "shuffle_buffer": 4},
              "train": {"steps": 2, "checkpoint_every": 1, "sample_every": 1},
              "styles": ["cartoon", "anime"]}
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory, tiny_models) -> tuple[Path, str]:
    """(root with a 4-image cartoon dataset, a config for it): enough that a command not stopped early would
    train, publish or write something."""
    from fstrain.ingest import ingest

    base = tmp_path_factory.mktemp("cli")
    write_portraits(base / "cartoon-images", "cartoon", 4, size=48)
    root = base / "root"
    assert ingest(str(base / "cartoon-images"), str(root), "cartoon", tiny_models.size, progress=False).ok == 4
    return root, write_config(base / "pipeline.yaml", tiny_models)


def test_train_refuses_steps_below_one_before_writing(pipeline_root):
    """`--steps 0` once trained nothing, published an untrained G and exited 0; `--steps -3` blamed a checkpoint."""
    root, config = pipeline_root
    before = files_under(root)
    for steps in ("0", "-3"):
        proc = run("fstrain.train", config, "--style", "cartoon", "--mode", "baseline", "--root", str(root),
                   "--run-id", "steps", "--steps", steps)
        assert refusal(proc) == f"error: --steps: must be >= 1, got {steps}"
    assert files_under(root) == before


def test_a_bad_config_value_is_exit_2_with_the_same_line_in_every_command(pipeline_root, tiny_models, tmp_path):
    """`lr: -1` (and a G of another size) exit 2 naming file, key and value, whichever command reads the config."""
    root, _ = pipeline_root
    before = files_under(root)
    bad_lr = write_config(tmp_path / "lr.yaml", tiny_models, train={"lr": -1})
    expected = f"error: {bad_lr}: key 'train.lr': must be > 0, got -1.0"
    commands = {
        "fstrain.train": ["--style", "cartoon", "--mode", "baseline", "--root", str(root), "--run-id", "lr"],
        "fstrain.pairs": ["--style", "cartoon", "--root", str(root), "--run-id", "lr"],
        "fstrain.stylize": [str(tmp_path), "--root", str(root), "--styles", "cartoon", "--out", str(tmp_path / "o")],
        "cluster.train": ["--root", str(root), "--styles", "cartoon", "--local"],
    }
    for module, args in commands.items():
        assert refusal(run(module, bad_lr, *args)) == expected, module
    # A config whose image size is not the model's: refused before a step, naming the key and the generator.
    wrong_size = write_config(tmp_path / "size.yaml", tiny_models, data={"image_size": 2 * tiny_models.size})
    message = refusal(run("fstrain.train", wrong_size, "--style", "cartoon", "--mode", "baseline", "--root",
                          str(root), "--run-id", "size"))
    assert "data.image_size is 64" in message and tiny_models.generator in message, message
    assert files_under(root) == before and not (tmp_path / "o").exists()


def test_a_misspelt_input_does_not_exist_rather_than_holding_no_images(pipeline_root, tmp_path):
    """ingest, fstrain.stylize and batch.stylize say the path does not exist; nothing is written."""
    root, config = pipeline_root
    missing = tmp_path / "photoz"
    cases = {
        "fstrain.ingest": ([str(missing), str(tmp_path / "dest"), "--style", "cartoon", "--size", "32"], "SRC"),
        "fstrain.stylize": ([config, str(missing), "--root", str(root), "--styles", "cartoon", "--out",
                             str(tmp_path / "grids")], "INPUT"),
        "batch.stylize": (["--input", str(missing), "--output", str(tmp_path / "out"), "--styles", "cartoon",
                           "--root", str(root), "--config", config, "--aligned"], "--input"),
    }
    for module, (args, flag) in cases.items():
        message = refusal(run(module, *args))
        assert message.startswith(f"error: {flag} {missing}: does not exist"), (module, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unreachable_storage_is_refused_before_any_image_is_read(s3_server, pipeline_root, tmp_path):
    """A missing bucket (ingest, cluster.train), a wrong endpoint, no credentials: exit 2 before the first image,
    where the old ingest read every image and then died with a 57-line traceback."""
    root, config = pipeline_root
    bucket = f"no-such-bucket-{os.getpid()}"
    src = str(root.parent / "cartoon-images")
    proc = run("fstrain.ingest", src, f"s3://{bucket}/root", "--style", "cartoon", "--size", "32", "--no-progress")
    message = refusal(proc)
    assert f"no such bucket '{bucket}'" in message and "create it or fix the URI" in message, message
    assert "ok," not in proc.stdout                    # no summary: not one image was processed
    proc = run("cluster.train", config, "--root", f"s3://{bucket}/root", "--styles", "cartoon", "--local")
    assert f"no such bucket '{bucket}'" in refusal(proc)
    assert "training styles" not in proc.stdout
    dest = s3_server.new_bucket("cli")
    wrong_endpoint = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    message = refusal(run("fstrain.ingest", src, f"s3://{dest}/root", "--style", "cartoon", "--size", "32",
                          "--no-progress", env=wrong_endpoint))
    assert "cannot connect to S3 endpoint" in message and "AWS_ENDPOINT_URL" in message, message
    no_credentials = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_PROFILE": None,
                      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                      "AWS_EC2_METADATA_DISABLED": "true"}
    message = refusal(run("fstrain.ingest", src, f"s3://{dest}/root", "--style", "cartoon", "--size", "32",
                          "--no-progress", env=no_credentials))
    assert "no AWS credentials found" in message and "AWS_ACCESS_KEY_ID" in message, message
    assert s3_server.client().list_objects_v2(Bucket=dest).get("KeyCount", 0) == 0
    assert not any(b["Name"] == bucket for b in s3_server.client().list_buckets()["Buckets"])


def test_cluster_train_needs_a_ray_address_or_local(pipeline_root):
    """No RAY_ADDRESS: refused (it used to start a local Ray silently); an address that does not answer: refused."""
    root, config = pipeline_root
    before = files_under(root)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "cluster.train", config, "--root", str(root), "--styles", "cartoon"],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    message = refusal(proc)
    assert "no Ray cluster given" in message and "RAY_ADDRESS" in message and "--local" in message, message
    dead = f"127.0.0.1:{free_port()}"
    message = refusal(run("cluster.train", config, "--root", str(root), "--styles", "cartoon",
                          env={"RAY_ADDRESS": dead}))
    assert message.startswith(f"error: Ray at {dead} (from RAY_ADDRESS) is not reachable"), message
    assert files_under(root) == before


def test_cluster_study_needs_a_ray_address_or_local_as_cluster_train_does(pipeline_root, tmp_path):
    """The study used to start a local Ray silently when RAY_ADDRESS was unset: hours of cells on the wrong machine."""
    root, config = pipeline_root
    study = tmp_path / "study.yaml"
    study.write_text(f"pipeline: {config}\nevaluation:\n  feature_net: none\n  identity: none\n"
                     f"  attribute_reader: none\n")
    before = files_under(root)
    message = refusal(run("cluster.study", str(study), "--root", str(root), "--out", str(tmp_path / "report"),
                          "--styles", "cartoon", env={"RAY_ADDRESS": None}))
    assert "no Ray cluster given" in message and "RAY_ADDRESS" in message and "--local" in message, message
    assert files_under(root) == before and not (tmp_path / "report" / "study.json").exists()


def test_console_scripts_run_the_same_commands_under_the_same_rule(pipeline_root):
    """`fstrain train …` is `python -m fstrain.train …`; an unknown command gets a did-you-mean and exit 2."""
    root, config = pipeline_root
    scripts = Path(sys.executable).parent
    proc = subprocess.run([str(scripts / "fstrain"), "train", config, "--style", "cartoon", "--mode", "sc_pc",
                           "--root", str(root)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert refusal(proc) == ("error: --mode: must be one of 'baseline', 'sc', 'pc', 'sc+pc'; got 'sc_pc' "
                             "(did you mean 'sc+pc'?)")
    proc = subprocess.run([str(scripts / "fstrain-cluster"), "trian"], capture_output=True, text=True, timeout=60)
    assert "unknown command 'trian' (did you mean 'train'?)" in refusal(proc)
    proc = subprocess.run([str(scripts / "fstrain-batch"), "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--input" in proc.stdout


def test_the_exit_code_rule():
    """One wrapper for every entry point: 0 done, 1 the work failed, 2 usage/config, 3 returned by batch;
    a failure is one line plus a hint, and `--debug` shows the traceback."""
    from fstrain.cli import UsageError, run_command
    from fstrain.config import ConfigError

    def failing(exc):
        def main(argv):
            raise exc
        return main

    assert run_command(lambda argv: 0, []) == 0 and run_command(lambda argv: None, []) == 0
    assert run_command(lambda argv: 3, []) == 3
    assert run_command(failing(UsageError("--x: bad")), []) == 2
    assert run_command(failing(ConfigError("a.yaml: key 'k': bad")), []) == 2
    assert run_command(failing(SystemExit("photo.png: not an image")), []) == 2
    assert run_command(failing(SystemExit(2)), []) == 2                     # argparse's own usage errors
    assert run_command(failing(RuntimeError("stage pairs died")), []) == 1
    with pytest.raises(RuntimeError, match="stage pairs died"):
        run_command(failing(RuntimeError("stage pairs died")), ["--debug"])
