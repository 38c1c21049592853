"""The CUDA sources compile with `python -m kernels.build` (sm_80 + sm_90 in one build), the build is cached,
and a broken build fails fast with the compiler's message. Needs nvcc, not a GPU."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import build as kbuild

REPO = Path(__file__).resolve().parents[1]
ARCHS = "8.0,9.0"

pytestmark = pytest.mark.skipif(kbuild.find_cuda_home() is None,
                                reason="nvcc (the CUDA toolkit) is not installed; set CUDA_HOME to enable")


def run_build(*args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernels.build", *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=timeout)


@pytest.mark.slow
def test_cuda_sources_compile_for_sm80_and_sm90_and_the_build_is_reused():
    # Uses the real cache (FSTRAIN_KERNELS_CACHE or ~/.cache/fstrain-kernels): a second run of the suite is instant.
    first = run_build("--arch", ARCHS)
    assert first.returncode == 0, f"build failed:\n{first.stdout}\n{first.stderr}"
    directory = kbuild.cache_root() / kbuild.build_key(["8.0", "9.0"])
    assert str(directory) in first.stdout
    record = json.loads((directory / "build.json").read_text())
    assert record["archs"] == ["8.0", "9.0"]
    library = directory / f"{record['module']}.so"
    built_at = library.stat().st_mtime_ns

    second = run_build("--arch", "9.0;8.0")  # same set, another spelling: same build
    assert second.returncode == 0, second.stderr
    assert "kernels: cached sm 8.0,9.0" in second.stdout
    assert library.stat().st_mtime_ns == built_at

    # The library imports without a GPU and its argument checks speak up before any kernel launch.
    probe = (
        "import torch\n"
        "from kernels.build import build\n"
        f"ext = build('{ARCHS}').module\n"
        "for call in (lambda: ext.upfirdn2d(torch.ones(1, 1, 4, 4), torch.ones(2, 2), 1, 1, 1, 1, 0, 0, 0, 0),\n"
        "             lambda: ext.bias_act(torch.ones(2, 3), None, None, 1, 2, 0.2, 1.4, -1.0, 0)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as error:\n"
        "        print(str(error).splitlines()[0])\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["upfirdn2d_cuda: x must be a CUDA tensor, got cpu",
                                       "bias_act_cuda: x must be a CUDA tensor, got cpu"]


def test_broken_sources_fail_with_the_compiler_message_even_over_a_stale_torch_lock(tmp_path):
    sources = tmp_path / "csrc"
    shutil.copytree(kbuild.SOURCE_DIR, sources)
    # A missing header is fatal at once (unlike #error, after which gcc goes on through torch's headers).
    for unit in [p for p in sources.iterdir() if p.suffix in (".cpp", ".cu")]:
        unit.write_text('#include "deliberately_missing_for_the_test.h"\n' + unit.read_text())
    cache = tmp_path / "cache"
    # A build killed earlier leaves torch's own baton file behind, which makes torch wait forever; ours clears it.
    stale_dir = cache / kbuild.build_key(["8.0"], sources)
    stale_dir.mkdir(parents=True)
    (stale_dir / "lock").write_text("")

    result = run_build("--arch", "8.0", "--sources", str(sources), env={"FSTRAIN_KERNELS_CACHE": str(cache)},
                       timeout=600)
    assert result.returncode == 1
    assert "building the CUDA extension" in result.stderr and "failed" in result.stderr
    assert "deliberately_missing_for_the_test.h" in result.stderr
    assert not (stale_dir / "build.json").exists()


def test_build_without_any_arch_and_without_a_gpu_says_what_to_do(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a visible GPU supplies the arch list")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env["FSTRAIN_KERNELS_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, "-m", "kernels.build"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1
    assert "pass --arch 8.0,9.0 or set TORCH_CUDA_ARCH_LIST" in result.stderr
