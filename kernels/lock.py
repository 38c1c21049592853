"""A build lock that cannot hang forever.

The anchors' plugin builders wait without limit on a lock file left behind by a killed build (their most common
complaint). This lock records who holds it and refreshes its timestamp while held, so a waiter can tell a live
builder from a dead one:

* the lock file holds JSON {pid, host, token, created}; its mtime is refreshed every `heartbeat_s` by the holder;
* it is stale when its PID is dead on this host, or its mtime is older than `stale_after_s` (a holder on another
  host, or one frozen without heartbeats); a stale lock is removed with a warning;
* waiting is bounded by `timeout_s`; running out raises `LockTimeoutError` naming the lock file and its holder.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = float(os.environ.get("FSTRAIN_KERNELS_LOCK_TIMEOUT", 1800))
DEFAULT_STALE_AFTER_S = float(os.environ.get("FSTRAIN_KERNELS_LOCK_STALE_AFTER", 120))


class LockTimeoutError(TimeoutError):
    """Waited longer than the timeout for a lock that another live process holds."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(path: Path) -> dict | None:
    """The lock file's owner record, {} when it is unreadable/partial, None when the file is gone."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
    except json.JSONDecodeError:  # the writer died between creating and writing it, or is writing right now
        return {}
    return owner if isinstance(owner, dict) else {}


def stale_reason(path: Path, owner: dict, stale_after_s: float) -> str | None:
    """Why the lock at `path` is stale, or None when its holder may still be alive."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if not pid_alive(owner["pid"]):
            return f"its owner PID {owner['pid']} on {owner['host']} is no longer running"
    if age > stale_after_s:
        return f"it was last refreshed {age:.0f} s ago (stale after {stale_after_s:.0f} s)"
    return None


class BuildLock:
    """Exclusive lock on `path` between processes (and hosts sharing the directory).

    Usage: `with BuildLock(dir / "lock"): ...`.
    """

    def __init__(self, path: str | os.PathLike, timeout_s: float | None = None, stale_after_s: float | None = None,
                 poll_s: float = 0.5):
        self.path = Path(path)
        self.timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
        self.stale_after_s = DEFAULT_STALE_AFTER_S if stale_after_s is None else float(stale_after_s)
        self.poll_s = poll_s
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- acquisition -------------------------------------------------------------------------------------------
    def _try_create(self) -> bool:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token, "created": time.time()}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return True

    def _break_stale(self, owner: dict, reason: str) -> None:
        """Remove a stale lock without ever removing a fresh one that replaced it meanwhile.

        The file is first renamed to a private name (atomic), then checked: if it turns out to be someone else's
        fresh lock (its token changed since we judged it stale), it is put back with a no-overwrite link.
        """
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        moved = read_owner(aside)
        if owner and moved and moved.get("token") != owner.get("token"):
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        log.warning("kernels: removed stale build lock %s held by %s: %s", self.path, describe(owner), reason)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        announced = False
        while True:
            if self._try_create():
                self._start_heartbeat()
                return
            owner = read_owner(self.path)
            if owner is None:
                continue  # released between our attempt and the read: try again at once
            reason = stale_reason(self.path, owner, self.stale_after_s)
            if reason is not None:
                self._break_stale(owner, reason)
                continue
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"kernels: timed out after {self.timeout_s:.0f} s waiting for the build lock {self.path} "
                    f"held by {describe(owner)}. If no build is running, delete that file; otherwise raise "
                    f"FSTRAIN_KERNELS_LOCK_TIMEOUT.")
            if not announced:
                log.info("kernels: waiting for build lock %s held by %s", self.path, describe(owner))
                announced = True
            time.sleep(self.poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        owner = read_owner(self.path)
        if owner is not None and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    # -- heartbeat ---------------------------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = max(min(self.stale_after_s / 4, 30.0), 0.05)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    os.utime(self.path)
                except FileNotFoundError:
                    return

        self._heartbeat = threading.Thread(target=beat, name="kernels-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def describe(owner: dict | None) -> str:
    if not owner:
        return "an unknown process (unreadable lock file)"
    created = owner.get("created")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)) if isinstance(created, (int, float)) else "?"
    return f"PID {owner.get('pid')} on {owner.get('host')} since {when}"
