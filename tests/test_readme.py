"""Every command in the README runs as written: the quick ones are run, the rest are checked against --help."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = (REPO_ROOT / "README.md").read_text()
RUN_MARKER = "<!-- readme-test: run -->"


def code_blocks(text: str) -> list[tuple[bool, list[str]]]:
    """(marked to run, commands) for each ```bash block; backslash continuations are joined."""
    blocks = []
    for match in re.finditer(r"(<!-- readme-test: run -->\n)?```bash\n(.*?)```", text, re.S):
        joined = match.group(2).replace("\\\n", " ")
        commands = [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
        blocks.append((match.group(1) is not None, commands))
    return blocks


def without_comment(command: str) -> str:
    return command.split("  #", 1)[0].strip()


def python_module_commands() -> list[list[str]]:
    found = []
    for _, commands in code_blocks(README):
        for command in commands:
            words = shlex.split(without_comment(command))
            if "python" in words and "-m" in words:
                start = words.index("python")
                if words[start + 1] == "-m":
                    found.append(words[start:])
    return found


def readme_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"   # `python` is the venv's
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


def test_readme_has_the_two_setup_commands_and_ci_calls_the_test_one():
    assert "make demo" in README and "make test" in README
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ci


def test_every_documented_module_accepts_its_documented_flags():
    commands = python_module_commands()
    assert len(commands) >= 15
    help_cache: dict[tuple[str, ...], str] = {}
    for words in commands:
        module = words[2]
        subcommand = (words[3],) if len(words) > 3 and not words[3].startswith("-") and module in {
            "cluster.local", "fstrain.metrics"} else ()
        key = (module, *subcommand)
        if key not in help_cache:
            done = subprocess.run([sys.executable, "-m", module, *subcommand, "--help"], capture_output=True,
                                  text=True, cwd=REPO_ROOT, env=readme_env(), timeout=120)
            assert done.returncode == 0, f"`python -m {' '.join(key)} --help` failed:\n{done.stderr[-2000:]}"
            help_cache[key] = done.stdout
        for flag in (w.split("=", 1)[0] for w in words[3:] if w.startswith("--")):
            assert flag in help_cache[key], f"README uses {flag} with python -m {module}, which does not accept it"


@pytest.mark.slow
def test_quick_readme_commands_run_as_written(tmp_path):
    # Run where a user would (the repo root's relative paths), but in a scratch dir: configs/ is linked in.
    (tmp_path / "configs").symlink_to(REPO_ROOT / "configs")
    marked = [commands for run, commands in code_blocks(README) if run]
    assert len(marked) >= 3
    for commands in marked:
        for command in commands:
            done = subprocess.run(command, shell=True, cwd=tmp_path, env=readme_env(), capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    # What the commands promise to leave behind.
    assert (tmp_path / "try" / "styles").exists() is False      # publishing is the cluster job's work, not these
    assert (tmp_path / "try" / "runs" / "hand" / "cartoon" / "sc+pc" / "final" / "generator.pt").exists()
    assert (tmp_path / "try" / "runs" / "hand" / "cartoon" / "pairs" / "contact_sheet.png").exists()
    assert (tmp_path / "try" / "grids" / "cartoon_grid.png").exists()
    assert (tmp_path / "try" / "runs" / "hand" / "cartoon" / "evaluation.md").exists()
    assert (tmp_path / "try" / "sheet.png").exists()
