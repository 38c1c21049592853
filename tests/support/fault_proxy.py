"""A fault-injecting HTTP proxy in front of the test S3 server (moto), for tests of retries and error causes.

    with FaultProxy(s3_server.endpoint_url) as proxy:       # listens on 127.0.0.1:<free port>
        proxy.add("reset-during", method="GET", path_contains="IMG #3.jpg", times=2)
        ... point AWS_ENDPOINT_URL (or configure_s3) at proxy.url ...
        assert proxy.injected == [...]                    # what was injected, in order

Every request is forwarded unchanged (same path bytes, same Host header, so signatures still match) unless a
queued fault matches it. Faults:

    reset-before   read the request, then reset the connection (TCP RST) before any response byte
    reset-during   send the status line, headers and half the body, then reset (no body: cut the headers)
    reset-after    send the whole response, then reset the connection (a pooled connection dies under the client)
    truncate       send the headers (full Content-Length) and half the body, then close cleanly (FIN)
    slowdown       answer `503 SlowDown` as S3 does when throttling, without asking the server

Bounded and self-stopping: a fault fires at most `times` times, at most `max_faults` faults fire in all, and the
proxy shuts itself down after `lifetime_s` seconds even if a test forgets to stop it.
"""
from __future__ import annotations

import http.client
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import unquote, urlsplit

import pytest

FAULT_KINDS = ("reset-before", "reset-during", "reset-after", "truncate", "slowdown")
# Hop-by-hop headers are the proxy's own business; `Expect` is answered by the proxy (100 Continue) itself.
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect"}
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>")


@dataclass
class Fault:
    kind: str
    method: str | None = None          # only requests with this HTTP method (None: any)
    path_contains: str | None = None   # only requests whose percent-decoded path contains this (None: any)
    query_contains: str | None = None  # only requests whose percent-decoded query contains this
    times: int = 1
    fired: int = 0

    def matches(self, method: str, path: str, query: str) -> bool:
        return (self.fired < self.times and (self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path)
                and (self.query_contains is None or self.query_contains in query))


class FaultProxy:
    """Threaded HTTP/1.1 proxy on 127.0.0.1 that forwards to `upstream` and injects queued faults."""

    def __init__(self, upstream: str, lifetime_s: float = 600.0, max_faults: int = 200):
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.max_faults = max_faults
        self.faults: list[Fault] = []
        self.injected: list[tuple[str, str, str]] = []     # (kind, method, decoded path) per fired fault
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True
        self._stopped = False

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> "FaultProxy":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add(self, kind: str, method: str | None = None, path_contains: str | None = None,
            query_contains: str | None = None, times: int = 1) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r}: use one of {FAULT_KINDS}")
        fault = Fault(kind, method, path_contains, query_contains, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def kinds_injected(self) -> list[str]:
        with self._lock:
            return [kind for kind, _, _ in self.injected]

    def _take(self, method: str, path: str, query: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            if len(self.injected) >= self.max_faults:
                return None
            for fault in self.faults:
                if fault.matches(method, path, query):
                    fault.fired += 1
                    self.injected.append((fault.kind, method, path))
                    return fault
        return None


def _handler_for(proxy: FaultProxy):
    class Handler(_ProxyHandler):
        pass

    Handler.proxy = proxy
    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as S3 clients expect
    proxy: FaultProxy

    def log_message(self, format, *args):  # noqa: A002 - quiet: tests read `proxy.injected` instead
        pass

    def do_GET(self):
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    # ---------------------------------------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length else None

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a dropped load balancer or NAT does."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _forward(self) -> None:
        body = self._read_body()
        split = urlsplit(self.path)
        fault = self.proxy._take(self.command, unquote(split.path), unquote(split.query))
        kind = fault.kind if fault else None
        if kind == "reset-before":
            return self._reset()
        if kind == "slowdown":
            self.send_response_only(503, "Slow Down")
            for name, value in (("Content-Type", "application/xml"), ("Content-Length", str(len(SLOWDOWN_BODY))),
                                ("x-amz-request-id", "fault-proxy")):
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOWDOWN_BODY)
            return
        status, reason, headers, data = self._upstream(body)
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                self.send_header(name, value)
        declared = self._declared_length(headers, data)
        self.send_header("Content-Length", str(declared))
        bodiless = self.command == "HEAD" or not data
        if bodiless and kind in ("reset-during", "truncate"):
            self.flush_headers()            # no body to cut: cut the header block before its blank line
            return self._reset()
        self.end_headers()
        if bodiless:
            if kind == "reset-after":
                self._reset()
            return
        if kind in ("reset-during", "truncate"):
            self.wfile.write(data[: len(data) // 2])
            if kind == "reset-during":
                return self._reset()
            self.close_connection = True     # truncate: a clean close (FIN) short of Content-Length
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            return
        self.wfile.write(data)
        if kind == "reset-after":
            self._reset()

    def _declared_length(self, headers: list[tuple[str, str]], data: bytes) -> int:
        if self.command == "HEAD":  # a HEAD answer declares the object's length, and carries no body
            for name, value in headers:
                if name.lower() == "content-length":
                    return int(value)
        return len(data)

    def _upstream(self, body: bytes | None):
        connection = http.client.HTTPConnection(*self.proxy.upstream, timeout=60)
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_HEADERS and name.lower() != "content-length":
                    connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            connection.close()


@pytest.fixture
def fault_proxy(s3_server) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of the session's moto server; stopped at the end of the test."""
    with FaultProxy(s3_server.endpoint_url, lifetime_s=600) as proxy:
        yield proxy
