"""Build and load the CUDA extension (all ops in one), ahead of time or on first CUDA use — never at import.

    python -m kernels.build [--arch 8.0,9.0] [--verbose]

Builds land in `<cache>/<key>/` where `<cache>` is `$FSTRAIN_KERNELS_CACHE` or `~/.cache/fstrain-kernels` and `<key>`
hashes the sources, the torch version, torch's CUDA version and the arch list. A finished build is marked by
`build.json`; loading a marked build imports the `.so` directly and never re-runs the compiler. Concurrent builders
serialise on `<cache>/<key>.lock` (see kernels/lock.py: stale locks are detected and removed, waits are bounded).

Arch list, first match wins: `--arch` / the `archs` argument, `TORCH_CUDA_ARCH_LIST`, the visible GPUs.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from kernels.lock import BuildLock

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCE_SUFFIXES = (".cpp", ".cu", ".h")
MARKER = "build.json"
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]
CXX_FLAGS = ["-O3"]


class BuildError(RuntimeError):
    """The extension could not be configured or compiled; the message carries the compiler output."""


@dataclass(frozen=True)
class BuiltExtension:
    module: ModuleType
    directory: Path
    archs: tuple[str, ...]
    cached: bool
    seconds: float


# -- arch lists -----------------------------------------------------------------------------------------------------
_ARCH_RE = re.compile(r"^(?:sm_|compute_)?(\d+)\.?(\d)([af]?)(\+PTX)?$", re.IGNORECASE)


def normalise_arch(text: str) -> str:
    """'8.0', '80', 'sm_80', '9.0a', '9.0+PTX' -> '8.0', '8.0', '8.0', '9.0a', '9.0+PTX'."""
    match = _ARCH_RE.match(text.strip())
    if not match:
        raise BuildError(f"kernels: cannot read CUDA arch {text!r}; write it like 8.0, 9.0 or 9.0+PTX")
    major, minor, suffix, ptx = match.groups()
    return f"{int(major)}.{minor}{suffix.lower()}{'+PTX' if ptx else ''}"


def parse_arch_list(text: str) -> list[str]:
    """Archs separated by ';', ',' or spaces, as TORCH_CUDA_ARCH_LIST or --arch write them; sorted, unique."""
    items = [item for item in re.split(r"[;,\s]+", text.strip()) if item]
    if not items:
        raise BuildError("kernels: the CUDA arch list is empty; write it like 8.0;9.0")
    return sorted({normalise_arch(item) for item in items})


def visible_gpu_archs() -> list[str]:
    if not torch.cuda.is_available():
        return []
    archs = set()
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        archs.add(f"{major}.{minor}")
    return sorted(archs)


def resolve_archs(archs: str | list[str] | None = None) -> list[str]:
    if archs:
        return parse_arch_list(archs if isinstance(archs, str) else ";".join(archs))
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env.lower() != "native":
        return parse_arch_list(env)
    detected = visible_gpu_archs()
    if detected:
        return detected
    raise BuildError("kernels: no CUDA device is visible and no arch list was given; "
                     "pass --arch 8.0,9.0 or set TORCH_CUDA_ARCH_LIST")


def gencode_flags(archs: list[str]) -> list[str]:
    """nvcc -gencode flags: real code for every arch, plus PTX for those marked +PTX."""
    flags = []
    for arch in archs:
        number = arch.replace("+PTX", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if arch.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


def arch_covers(archs: tuple[str, ...] | list[str], capability: tuple[int, int]) -> bool:
    """Whether a build for `archs` runs on a GPU of this compute capability (exact SASS, or older PTX to JIT)."""
    wanted = capability[0] * 10 + capability[1]
    for arch in archs:
        number = int(re.sub(r"[^0-9]", "", arch.replace("+PTX", "")))
        plain = not arch.replace("+PTX", "")[-1].isalpha()  # 9.0a code runs on 9.0 exactly, like 9.0
        if number == wanted or (arch.endswith("+PTX") and plain and number <= wanted):
            return True
    return False


# -- environment ----------------------------------------------------------------------------------------------------
def find_cuda_home() -> Path | None:
    """CUDA_HOME/CUDA_PATH, else the toolkit that `nvcc` belongs to (wrappers resolved), else /usr/local/cuda."""
    for name in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(name)
        if value and (Path(value) / "bin" / "nvcc").exists():
            return Path(value)
    candidates = [Path("/usr/local/cuda")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.insert(0, Path(nvcc).resolve().parent.parent)
    for candidate in candidates:
        if (candidate / "bin" / "nvcc").exists() and (candidate / "include" / "cuda_runtime.h").exists():
            return candidate
    return None


def configure_cpp_extension():
    """Import torch.utils.cpp_extension with CUDA_HOME pointing at a real toolkit (it reads it at import)."""
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise BuildError("kernels: nvcc not found; install the CUDA toolkit and set CUDA_HOME (e.g. /usr/local/cuda)")
    os.environ["CUDA_HOME"] = str(cuda_home)
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = str(cuda_home)
    return cpp_extension


# -- cache ----------------------------------------------------------------------------------------------------------
def cache_root() -> Path:
    configured = os.environ.get("FSTRAIN_KERNELS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fstrain-kernels"


def source_files(source_dir: Path = SOURCE_DIR) -> list[Path]:
    files = sorted(p for p in Path(source_dir).iterdir() if p.suffix in SOURCE_SUFFIXES)
    if not any(p.suffix == ".cu" for p in files):
        raise BuildError(f"kernels: no CUDA sources in {source_dir}")
    return files


def build_key(archs: list[str], source_dir: Path = SOURCE_DIR) -> str:
    digest = hashlib.sha256()
    for path in source_files(source_dir):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for part in (torch.__version__, str(torch.version.cuda), ";".join(archs), " ".join(NVCC_FLAGS + CXX_FLAGS)):
        digest.update(part.encode() + b"\0")
    cuda = str(torch.version.cuda).replace(".", "")
    arch_tag = "_".join(a.replace(".", "").replace("+PTX", "ptx") for a in archs)
    return f"torch{torch.__version__.split('+')[0]}-cu{cuda}-sm{arch_tag}-{digest.hexdigest()[:16]}"


def module_name(key: str) -> str:
    return "fstrain_kernels_" + key.rsplit("-", 1)[-1]


def import_built(directory: Path, name: str) -> ModuleType:
    """Import an already-compiled extension without touching the compiler."""
    if name in sys.modules:
        return sys.modules[name]
    library = directory / f"{name}.so"
    spec = importlib.util.spec_from_file_location(name, library,
                                                  loader=importlib.machinery.ExtensionFileLoader(name, str(library)))
    if spec is None or spec.loader is None:
        raise BuildError(f"kernels: cannot import {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


def build(archs: str | list[str] | None = None, verbose: bool = False, source_dir: Path | None = None,
          lock_timeout_s: float | None = None) -> BuiltExtension:
    """Compile (or reuse) the extension for `archs` and import it. Raises BuildError with the compiler output."""
    started = time.monotonic()
    source_dir = Path(source_dir) if source_dir else SOURCE_DIR
    arch_list = resolve_archs(archs)
    key = build_key(arch_list, source_dir)
    directory = cache_root() / key
    name = module_name(key)
    marker = directory / MARKER

    def reuse() -> BuiltExtension | None:
        if marker.exists() and (directory / f"{name}.so").exists():
            return BuiltExtension(import_built(directory, name), directory, tuple(arch_list), True,
                                  time.monotonic() - started)
        return None

    found = reuse()
    if found:
        return found
    with BuildLock(cache_root() / f"{key}.lock", timeout_s=lock_timeout_s):
        found = reuse()  # another process may have finished it while we waited
        if found:
            return found
        cpp_extension = configure_cpp_extension()
        directory.mkdir(parents=True, exist_ok=True)
        # torch's own FileBaton lock in the build directory hangs forever when a build was killed; our lock
        # already makes this process the only builder, so a leftover one is always stale.
        (directory / "lock").unlink(missing_ok=True)
        log.warning("kernels: compiling the CUDA extension for sm %s into %s (takes minutes, done once)",
                    ",".join(arch_list), directory)
        try:
            module = cpp_extension.load(
                name=name,
                sources=[str(p) for p in source_files(source_dir) if p.suffix in (".cpp", ".cu")],
                extra_cflags=CXX_FLAGS,
                extra_cuda_cflags=NVCC_FLAGS + gencode_flags(arch_list),
                extra_include_paths=[str(source_dir)],
                build_directory=str(directory),
                verbose=verbose,
                with_cuda=True,
                is_python_module=True,
            )
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            raise BuildError(f"kernels: building the CUDA extension in {directory} failed:\n{error}") from error
        seconds = time.monotonic() - started
        record = {"key": key, "archs": arch_list, "torch": torch.__version__, "cuda": torch.version.cuda,
                  "module": name, "seconds": round(seconds, 1), "built_at": time.time()}
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, marker)
        sys.modules.setdefault(name, module)
        return BuiltExtension(module, directory, tuple(arch_list), False, seconds)


# -- first-use loading for a device ---------------------------------------------------------------------------------
_loaded: dict[tuple[int, int], BuiltExtension | BuildError] = {}


def extension_for(device: torch.device) -> BuiltExtension:
    """The extension that runs on `device`, built on first use and remembered (also a failure) per capability."""
    capability = torch.cuda.get_device_capability(device)
    if capability not in _loaded:
        try:
            env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
            # TORCH_CUDA_ARCH_LIST wins when set; otherwise build exactly for the GPUs in this machine.
            built = build(None if env and env.lower() != "native" else visible_gpu_archs())
            if not arch_covers(built.archs, capability):
                raise BuildError(f"kernels: the extension was built for sm {','.join(built.archs)} "
                                 f"(TORCH_CUDA_ARCH_LIST) but this GPU is sm {capability[0]}.{capability[1]}")
            _loaded[capability] = built
        except BuildError as error:
            _loaded[capability] = error
    result = _loaded[capability]
    if isinstance(result, BuildError):
        raise result
    return result


# -- command line ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", help="CUDA archs, e.g. 8.0,9.0 or 9.0+PTX (default: TORCH_CUDA_ARCH_LIST, "
                                       "else the visible GPUs)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands and output")
    parser.add_argument("--sources", type=Path, default=None, help=argparse.SUPPRESS)  # tests: modified sources
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        built = build(args.arch, verbose=args.verbose, source_dir=args.sources)
    except BuildError as error:
        print(error, file=sys.stderr)
        return 1
    state = "cached" if built.cached else "built"
    print(f"kernels: {state} sm {','.join(built.archs)} in {built.seconds:.1f} s: {built.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
