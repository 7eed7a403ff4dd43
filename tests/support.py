"""Helpers shared by the integration and systemd tests: free ports, HTTP calls, a continuous load."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APPS = Path(__file__).parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(port: int, path: str = "/", timeout: float = 5.0, method: str = "GET", body: bytes | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        data = response.read()
        assert response.status < 300, (response.status, data)
        return json.loads(data)
    finally:
        conn.close()


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start time, seconds)

    def max_latency(self, since: float = 0.0, until: float = float("inf")) -> float:
        return max((lat for start, lat in self.latencies if since <= start <= until), default=0.0)


class Load:
    """Continuous HTTP load from threads: some clients keep one connection alive, some open one per request.

    A keep-alive client reconnects only when the server said ``Connection: close``; any other broken
    connection counts as a failed request, which is what a client behind a careless reload would see.
    """

    def __init__(self, port: int, keepalive: int = 4, fresh: int = 4, path: str = "/", timeout: float = 10.0,
                 tls: ssl.SSLContext | None = None):  # fmt: skip
        """``tls``: the clients speak HTTPS, trusting what this context trusts."""
        self.port, self.path, self.timeout, self.tls = port, path, timeout, tls
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._keepalive_client, daemon=True) for _ in range(keepalive)]
        self._threads += [threading.Thread(target=self._fresh_client, daemon=True) for _ in range(fresh)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)
        return self.result

    def _record(self, start: float, response: http.client.HTTPResponse | None, data: bytes, error: str) -> None:
        with self._lock:
            if response is not None and response.status == 200:
                self.result.ok += 1
                self.result.pids.add(json.loads(data)["pid"])
                self.result.latencies.append((start, time.monotonic() - start))
            else:
                self.result.failed += 1
                status = response.status if response is not None else None
                self.result.errors.append(error or f"HTTP {status}")

    def _connection(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=self.timeout, context=self.tls)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)

    def _keepalive_client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = self._connection()
            start = time.monotonic()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                data = response.read()
                self._record(start, response, data, "")
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self._record(start, None, b"", f"keep-alive: {type(exc).__name__}: {exc}")
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _fresh_client(self) -> None:
        while not self._stop.is_set():
            conn = self._connection()
            start = time.monotonic()
            try:
                conn.request("GET", self.path, headers={"Connection": "close"})
                response = conn.getresponse()
                self._record(start, response, response.read(), "")
            except (OSError, http.client.HTTPException) as exc:
                self._record(start, None, b"", f"fresh: {type(exc).__name__}: {exc}")
            finally:
                conn.close()


class Worker:
    """A keep-alive connection that stays with one worker."""

    def __init__(self, conn: http.client.HTTPConnection, pid: int) -> None:
        self.conn, self.pid = conn, pid

    def get(self, path: str, timeout: float = 60) -> Any:
        self.conn.timeout = timeout
        if self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        data = response.read()
        assert response.status == 200, data
        return json.loads(data)


def workers(port: int, count: int = 2) -> list[Worker]:
    """One connection to each of ``count`` different workers."""
    found: dict[int, Worker] = {}
    for _ in range(500):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        pid = json.loads(response.read())["pid"]
        if pid in found:
            conn.close()
        else:
            found[pid] = Worker(conn, pid)
        if len(found) == count:
            return list(found.values())
    raise AssertionError(f"reached only workers {sorted(found)}")


@contextlib.contextmanager
def held_workers(port: int, count: int = 2) -> Iterator[list[Worker]]:
    """:func:`workers`, closed at the end of the block: with a long ``keepalive_timeout`` (so that an idle
    connection stays with its worker through slow waits), an open one would hold a draining worker that long."""
    found = workers(port, count)
    try:
        yield found
    finally:
        for w in found:
            w.conn.close()


def request(port: int, method: str = "GET", path: str = "/", body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def inflight(status: dict[str, Any]) -> int:
    """Requests in flight across the workers of a ``corepool status --json`` answer."""
    return sum(w["inflight"] for w in status["workers"])
