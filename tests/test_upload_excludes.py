"""What a `ray job submit --working-dir .` of this repository uploads: never the README's scratch roots (try/,
demo-out/), the venv or .git — by .gitignore, by .rayignore (read by Ray even with .gitignore turned off), and by
the runtime_env "excludes" cluster.demo passes. Checked with Ray's own packaging code, on a small stand-in tree."""
from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from cluster.local import upload_excludes

REPO = Path(__file__).resolve().parents[1]
SCRATCH_ROOTS = ("try", "demo-out")


def test_readme_scratch_roots_are_ignored_by_git():
    readme = (REPO / "README.md").read_text()
    for root in SCRATCH_ROOTS:
        assert re.search(rf"(?<![\w/.-]){re.escape(root)}/", readme), f"README no longer writes into {root}/"
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [f"{root}/runs/x/generator.pt" for root in SCRATCH_ROOTS]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(paths), done.stdout


def _uploaded(tmp_path: Path, *, excludes: list[str], include_gitignore: bool, ignore_files: tuple[str, ...]) -> set:
    from ray._private.runtime_env.packaging import _zip_files

    tree = tmp_path / "repo"
    for name in ("fstrain/losses.py", "try/runs/hand/generator.pt", "demo-out/stylized/a.png", ".venv/lib/x.py",
                 ".git/HEAD", "fstrain/__pycache__/losses.cpython.pyc"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"x")
    for name in ignore_files:
        shutil.copy(REPO / name, tree / name)
    archive = tmp_path / "upload.zip"
    _zip_files(str(tree), excludes, str(archive), include_gitignore=include_gitignore)
    with zipfile.ZipFile(archive) as handle:
        return {name for name in handle.namelist() if not name.endswith("/")}


@pytest.mark.parametrize("how", ["gitignore", "rayignore", "excludes"])
def test_upload_leaves_out_scratch_roots_venv_and_git(tmp_path, how):
    kwargs = {"gitignore": dict(excludes=[], include_gitignore=True, ignore_files=(".gitignore",)),
              "rayignore": dict(excludes=[], include_gitignore=False, ignore_files=(".rayignore",)),
              "excludes": dict(excludes=upload_excludes(), include_gitignore=False, ignore_files=())}[how]
    uploaded = _uploaded(tmp_path, **kwargs) - {".gitignore", ".rayignore"}
    if how == "gitignore":   # .git is Ray's to skip or not; .gitignore names the rest
        uploaded -= {".git/HEAD"}
    assert uploaded == {"fstrain/losses.py"}
