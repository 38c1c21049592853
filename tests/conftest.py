"""Shared pytest set-up. Fixtures live in tests/support/<topic>.py and are imported here by name."""
import os
import sys
from pathlib import Path

# Keep every Ray port on loopback and never phone home, before anything imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from support.s3_server import *  # noqa
from support.kernels import *  # noqa
from support.tiny_models import *  # noqa
from support.portraits import *  # noqa
from support.evaluation_world import *  # noqa
from support.ray_cluster import *  # noqa

# One torch thread per test process: on 2 cores shared with Ray workers and subprocesses, extra intra-op threads
# only busy-wait (measured: a test file went from 220 s to 20 s). Benchmarks set their own thread counts.
import torch  # noqa: E402

torch.set_num_threads(1)
