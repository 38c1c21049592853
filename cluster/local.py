"""A Ray cluster on this machine that we start and stop ourselves: a plain head, or a fake-multinode autoscaling one.

    python -m cluster.local up [--gpu-workers-max N] [--idle-timeout S] [--head-cpus N] [--state-dir DIR]
    python -m cluster.local env  [--state-dir DIR]     # export lines for `ray job submit` against it
    python -m cluster.local down [--state-dir DIR]

`up` starts a head whose autoscaler uses Ray's fake_multinode provider (config: cluster/fake_multinode.yaml) with a
GPU worker type `{CPU: 2, GPU: 1}` scaling from 0 to N; idle workers go away after the idle timeout. Why not
`ray.cluster_utils.AutoscalingCluster`: its start()/shutdown() run `ray stop --force`, which kills every Ray of
the user, and it reads an example file the wheel lacks. Instead the head is started in a new process session and
its process group (plus descendants, which covers raylet workers that call setsid) is recorded in
`<state-dir>/cluster.json`, so `down` stops exactly what `up` started and nothing else.

Authentication: Ray 2.60 turns token auth on for local clusters and would write a token to ~/.ray/auth_token,
shared by every cluster of the user. We keep token auth on (any local user can reach loopback ports) but give
each cluster its own token file: RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH=<state-dir>/auth_token. Every client
(ray CLI, job driver, in-process driver) must carry those two variables: `LocalRay.client_env()` / `connect()`.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

FAKE_MULTINODE_TEMPLATE = Path(__file__).with_name("fake_multinode.yaml")
RAYIGNORE = Path(__file__).resolve().parents[1] / ".rayignore"
STATE_FILE = "cluster.json"
GPU_WORKER_TYPE = "gpu_worker"


def upload_excludes(rayignore: Path = RAYIGNORE) -> list[str]:
    """The runtime_env "excludes" for a job whose working_dir is this repository: the patterns of `.rayignore`
    (scratch roots such as try/ and demo-out/, .venv, .git), so an upload never carries outputs of hand runs."""
    lines = (line.strip() for line in rayignore.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class LocalClusterError(RuntimeError):
    """Starting, finding or stopping a local Ray cluster failed; the message names the state dir and the fix."""


def default_state_dir() -> Path:
    # Short on purpose: Ray puts unix sockets under the temp dir and socket paths are limited to ~107 bytes.
    return Path(f"/tmp/fstrain-ray-{os.getuid()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_auth_env(state_dir: Path) -> dict[str, str]:
    """A fresh per-cluster token (mode 0600) and the variables that make Ray servers and clients use it."""
    token_path = state_dir / "auth_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


@dataclass
class LocalRay:
    """What we started: enough to connect to it and to stop exactly it."""
    state_dir: str
    temp_dir: str
    gcs_address: str                 # 127.0.0.1:<port>, for ray.init(address=...)
    dashboard_url: str               # http://127.0.0.1:<port>, for `ray job submit --address`
    pgid: int                        # process group of everything `ray start` spawned
    auth_env: dict[str, str]
    autoscaling: bool = False
    started_at: float = field(default_factory=time.time)

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess client (ray CLI, scripts): our address + our token, nobody else's."""
        env = dict(os.environ if base is None else base)
        env.update(_ray_process_env())
        env.update(self.auth_env)
        env["RAY_ADDRESS"] = self.dashboard_url
        return env

    @contextmanager
    def connect(self, **init_kwargs: Any) -> Iterator[None]:
        """In-process driver: ray.init(address=gcs) with our token, then shutdown and restore the environment.

        Only one in-process Ray connection can exist per process; this refuses to nest.
        """
        import ray
        from ray._private import ray_constants
        if ray_constants.ENABLE_RAY_CLUSTER:
            # Ray read this at import: with it on, 127.0.0.1 is rewritten to the machine's external address.
            raise LocalClusterError("set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before `import ray` to reach a "
                                    "loopback-only cluster")
        if ray.is_initialized():
            raise LocalClusterError("ray is already initialised in this process; shut it down before connect()")
        with ray_auth_applied(self.auth_env):
            ray.init(address=self.gcs_address, **init_kwargs)
            try:
                yield
            finally:
                ray.shutdown()

    def alive_pids(self) -> list[int]:
        return _cluster_pids(self.pgid)


@contextmanager
def ray_auth_applied(auth_env: dict[str, str]) -> Iterator[None]:
    """Make this process use `auth_env` (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH) for Ray, restoring it afterwards."""
    saved = {k: os.environ.get(k) for k in auth_env}
    os.environ.update(auth_env)
    _refresh_ray_auth_config()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth_config()


def _refresh_ray_auth_config() -> None:
    """Ray caches RAY_AUTH_MODE / the token in C++ when first read; re-read them after changing the environment."""
    from ray._raylet import AuthenticationTokenLoader, Config
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _ray_process_env() -> dict[str, str]:
    # Loopback only, no usage stats, and job entrypoints find this venv's `python` first.
    return {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def fake_multinode_config(gcs_address: str, *, head_cpus: int, gpu_workers_max: int, idle_timeout_s: float,
                          worker_cpus: int = 2) -> dict[str, Any]:
    """cluster/fake_multinode.yaml with this cluster's GCS address, GPU worker limit and idle timeout."""
    config = yaml.safe_load(FAKE_MULTINODE_TEMPLATE.read_text())
    config["provider"]["gcs_address"] = gcs_address
    config["idle_timeout_minutes"] = idle_timeout_s / 60.0
    config["max_workers"] = gpu_workers_max
    config["available_node_types"]["ray.head.default"]["resources"] = {"CPU": head_cpus}
    gpu = config["available_node_types"][GPU_WORKER_TYPE]
    gpu["max_workers"] = gpu_workers_max
    gpu["resources"] = {"CPU": worker_cpus, "GPU": 1}
    return config


def start_head(state_dir: Path | str, *, num_cpus: int = 4, num_gpus: int = 0,
               autoscaling_config: dict[str, Any] | None = None, include_dashboard: bool = True,
               gcs_port: int | None = None, timeout_s: float = 120.0) -> LocalRay:
    """`ray start --head` on loopback with free ports, in its own process session; state saved for `stop`."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    existing = read_state(state_dir)
    if existing is not None and existing.alive_pids():
        raise LocalClusterError(f"a Ray cluster from {state_dir} is still running (pgid {existing.pgid}); "
                                f"run `python -m cluster.local down --state-dir {state_dir}` first")
    temp_dir = state_dir / "t"
    gcs_port, dash_port = gcs_port or free_port(), free_port()
    gcs_address = f"127.0.0.1:{gcs_port}"
    auth_env = make_auth_env(state_dir)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(_ray_process_env())
    env.update(auth_env)
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head",
           f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
           f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
           f"--include-dashboard={'true' if include_dashboard else 'false'}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
           # Fixed defaults (10001, 52365) would collide with another cluster on the machine.
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    if autoscaling_config is not None:
        config_path = state_dir / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(autoscaling_config, sort_keys=False))
        cmd.append(f"--autoscaling-config={config_path}")
        # The fake provider refuses to run without RAY_FAKE_CLUSTER; a 1 s update loop makes scaling prompt.
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    log_path = state_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = LocalRay(state_dir=str(state_dir), temp_dir=str(temp_dir), gcs_address=gcs_address,
                       dashboard_url=f"http://127.0.0.1:{dash_port}", pgid=proc.pid, auth_env=auth_env,
                       autoscaling=autoscaling_config is not None)
    write_state(cluster)   # before waiting: a failed start must still be stoppable
    try:
        rc = proc.wait(timeout=timeout_s)
        if rc != 0:
            raise LocalClusterError(f"`ray start --head` exited with {rc}; see {log_path}:\n{_tail(log_path)}")
        if include_dashboard:
            _wait_for_dashboard(cluster.dashboard_url, auth_env["RAY_AUTH_TOKEN_PATH"], timeout_s)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _wait_for_dashboard(url: str, token_path: str, timeout_s: float) -> None:
    """`ray job submit` works only once the dashboard's HTTP API answers (with our token)."""
    token = Path(token_path).read_text().strip()
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise LocalClusterError(f"Ray dashboard at {url} did not answer within {timeout_s:.0f}s")
        time.sleep(0.5)


def _tail(path: Path, n: int = 3000) -> str:
    data = path.read_bytes() if path.exists() else b""
    return data[-n:].decode(errors="replace")


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, uid) for every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), uid)
    return table


def _cluster_pids(pgid: int) -> list[int]:
    """Members of our process group plus all their descendants (Ray workers setsid, so they leave the group)."""
    table = _proc_table()
    uid = os.getuid()
    members = {pid for pid, (_, g, u) in table.items() if g == pgid and u == uid}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack, found = list(members), set(members)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and table[child][2] == uid:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)


def stop(cluster: LocalRay, grace_s: float = 5.0) -> list[int]:
    """SIGTERM then SIGKILL exactly the processes of this cluster; returns the pids that were signalled."""
    pids = cluster.alive_pids()
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.2)
        if not any(_pid_alive(p) for p in pids):
            break
    state = Path(cluster.state_dir) / STATE_FILE
    if state.exists():
        state.unlink()
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"   # a zombie has exited already
    except OSError:
        return False


def write_state(cluster: LocalRay) -> None:
    path = Path(cluster.state_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(cluster), indent=2))
    tmp.replace(path)


def read_state(state_dir: Path | str) -> LocalRay | None:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    return LocalRay(**json.loads(path.read_text()))


@contextmanager
def local_head(state_dir: Path | str, **kwargs: Any) -> Iterator[LocalRay]:
    """A plain head for the duration of a `with` block."""
    cluster = start_head(state_dir, **kwargs)
    try:
        yield cluster
    finally:
        stop(cluster)


@contextmanager
def fake_multinode_cluster(state_dir: Path | str, *, gpu_workers_max: int = 5, idle_timeout_s: float = 10.0,
                           head_cpus: int = 2, worker_cpus: int = 2, **kwargs: Any) -> Iterator[LocalRay]:
    """An autoscaling head whose simulated GPU workers scale 0..gpu_workers_max, for a `with` block."""
    cluster = start_fake_multinode(state_dir, gpu_workers_max=gpu_workers_max, idle_timeout_s=idle_timeout_s,
                                   head_cpus=head_cpus, worker_cpus=worker_cpus, **kwargs)
    try:
        yield cluster
    finally:
        stop(cluster)


def start_fake_multinode(state_dir: Path | str, *, gpu_workers_max: int = 5, idle_timeout_s: float = 10.0,
                         head_cpus: int = 2, worker_cpus: int = 2, **kwargs: Any) -> LocalRay:
    # The provider needs the GCS address inside its config, so the port is chosen before the head starts.
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = fake_multinode_config(f"127.0.0.1:{port}", head_cpus=head_cpus, gpu_workers_max=gpu_workers_max,
                                   idle_timeout_s=idle_timeout_s, worker_cpus=worker_cpus)
    return start_head(state_dir, gcs_port=port, num_cpus=head_cpus, autoscaling_config=config, **kwargs)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a fake-multinode autoscaling cluster")
    up.add_argument("--gpu-workers-max", type=int, default=5)
    up.add_argument("--idle-timeout", type=float, default=30.0, help="seconds before an idle worker is removed")
    up.add_argument("--head-cpus", type=int, default=2)
    for p in (up, sub.add_parser("down", help="stop the cluster `up` started"),
              sub.add_parser("env", help="print shell exports for clients of the cluster")):
        p.add_argument("--state-dir", type=Path, default=default_state_dir())
    args = parser.parse_args(argv)

    if args.command == "up":
        cluster = start_fake_multinode(args.state_dir, gpu_workers_max=args.gpu_workers_max,
                                       idle_timeout_s=args.idle_timeout, head_cpus=args.head_cpus)
        print(f"Ray head up: {cluster.gcs_address}, dashboard {cluster.dashboard_url}, "
              f"GPU workers 0..{args.gpu_workers_max} (idle timeout {args.idle_timeout:g}s)")
        print(f"Clients need its token: eval \"$(python -m cluster.local env --state-dir {args.state_dir})\"")
        return 0
    cluster = read_state(args.state_dir)
    if cluster is None:
        print(f"no cluster recorded in {args.state_dir / STATE_FILE}; nothing to do", file=sys.stderr)
        return 1 if args.command == "env" else 0
    if args.command == "env":
        for key, value in {**cluster.auth_env, "RAY_ADDRESS": cluster.dashboard_url}.items():
            print(f"export {key}={value}")
        return 0
    pids = stop(cluster)
    print(f"stopped {len(pids)} Ray processes of {args.state_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
