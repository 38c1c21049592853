"""A real S3-compatible server for tests: moto's server mode in a subprocess on 127.0.0.1, spoken to over HTTP.

The session fixture exports AWS_ENDPOINT_URL and fake credentials into os.environ so that subprocesses and Ray
workers started by tests inherit them and reach the same server, exactly as they would reach MinIO.
"""
from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would point boto3 elsewhere (a developer's real profile or token) are removed for the session.
CLEARED_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not listen on 127.0.0.1:{port} within {timeout}s")


class S3TestServer:
    """Handle on the running server: its endpoint and a way to make fresh buckets."""

    _counter = itertools.count()

    def __init__(self, endpoint_url: str, proc: subprocess.Popen):
        self.endpoint_url = endpoint_url
        self.proc = proc

    def client(self):
        from fstrain.data import storage

        return storage.s3_client()

    def new_bucket(self, prefix: str = "test") -> str:
        """Create a bucket with a unique name and return the name."""
        from fstrain.data import storage

        name = f"{prefix}-{next(self._counter)}-{uuid.uuid4().hex[:8]}".lower()
        storage.make_bucket(name)
        return name


def _moto_server_command(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    from fstrain.data import storage

    port = free_port()
    proc = subprocess.Popen(_moto_server_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in (*TEST_ENV, *CLEARED_ENV, "AWS_ENDPOINT_URL")}
    try:
        _wait_listening(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        for key in CLEARED_ENV:
            os.environ.pop(key, None)
        os.environ.update(TEST_ENV)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        storage.configure_s3(reset=True)
        yield S3TestServer(endpoint, proc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: S3TestServer) -> str:
    """Name of a fresh, empty bucket."""
    return s3_server.new_bucket()


@pytest.fixture
def s3_root(s3_bucket: str) -> str:
    """`s3://<fresh-bucket>/root`: an empty storage root on the test server."""
    return f"s3://{s3_bucket}/root"


@pytest.fixture
def local_root(tmp_path: Path) -> str:
    """An empty local storage root (a directory path as a string)."""
    root = tmp_path / "root"
    root.mkdir()
    return str(root)


@pytest.fixture(params=["local", "s3"])
def storage_root(request: pytest.FixtureRequest) -> str:
    """An empty storage root, once as a local directory and once on the S3 test server."""
    return request.getfixturevalue("local_root" if request.param == "local" else "s3_root")
