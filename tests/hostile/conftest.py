"""The hostile-client suite: one pool per interface (a single worker, so that its call counter is the pool's),
started once per module, and a raw client that sends bytes exactly as given and reads one answer."""

from __future__ import annotations

import http.client
import io
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.integration.conftest import Pool, engine_param

APPS = {"asgi": "hostile_app:asgi", "wsgi": "hostile_app:wsgi", "granian": "hostile_app:wsgi"}
MARK = "corepool-hostile-app"


@dataclass
class Answer:
    """What came back for one raw request: a status (None: the connection closed with no answer), and the
    request as the app saw it (None: the answer did not come from the app)."""

    status: int | None
    seen: dict[str, object] | None
    raw: bytes

    @property
    def headers(self) -> dict[str, str]:
        """The request's headers as the app saw them (lower-case names; repeated ones joined by ", ")."""
        assert self.seen is not None
        out: dict[str, str] = {}
        for name, value in self.seen["headers"]:  # type: ignore[union-attr]
            out[name] = f"{out[name]}, {value}" if name in out else value
        return out


class _Kept(io.BufferedReader):
    """A reader that outlives the response that "closes" it."""

    def close(self) -> None:
        pass


class _Connection:
    """A socket whose ``makefile`` always hands out one buffered reader, so that several responses read from it
    in turn (pipelining) do not lose what the first one's buffer read ahead."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = _Kept(socket.SocketIO(sock, "rb"))

    def makefile(self, mode: str) -> BinaryIO:
        return self.file


def read_answer(conn: _Connection) -> Answer:
    """One HTTP response from ``conn`` (by its framing, not by waiting for a close)."""
    response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
    except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead):
        return Answer(None, None, b"")
    except http.client.BadStatusLine as exc:
        raise AssertionError(f"not an HTTP response: {exc!r}") from None
    seen = None
    if response.status == 200 and body.startswith(b"{"):
        data = json.loads(body)
        if data.get("app") == MARK:
            seen = data
    return Answer(response.status, seen, body)


# Ports of pools on granian: hyper drops a request whose client half-closed before the answer (README, Engines),
# so their clients do not half-close, and the pool's short keepalive_timeout ends a request cut short instead.
NO_HALF_CLOSE: set[int] = set()


def send_raw(port: int, data: bytes, answers: int = 1, half_close: bool = True) -> list[Answer]:
    """Send ``data`` as it is (then half-close, unless told not to: a request cut short must end, not wait for
    header_timeout), and read up to ``answers`` answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if half_close and port not in NO_HALF_CLOSE:
            sock.shutdown(socket.SHUT_WR)
        out = []
        conn = _Connection(sock)
        for _ in range(answers):
            answer = read_answer(conn)
            out.append(answer)
            if answer.status is None:
                break
        return out


class HostilePool:
    def __init__(self, pool: Pool, interface: str) -> None:
        """``interface``: asgi, wsgi (on the bridge) or granian (WSGI on granian's engine)."""
        self.pool, self.interface = pool, interface
        self.port = pool.port

    def calls(self) -> int:
        """How many requests the app has been called with (the pool has one worker)."""
        (answer,) = send_raw(self.port, b"GET /__calls HTTP/1.1\r\nHost: t\r\n\r\n")
        assert answer.status == 200, answer
        return int(json.loads(answer.raw)["calls"])


@pytest.fixture(scope="module", params=["asgi", "wsgi", "granian"])
def hostile(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostilePool]:
    """A one-worker pool of the echoing app (ASGI, WSGI on the bridge, WSGI on granian), shared by the tests of a
    module."""
    interface = str(request.param)
    if interface == "granian":
        engine_param(request)  # skipped where granian cannot serve
    tmp: Path = tmp_path_factory.mktemp(f"hostile-{interface}")
    engine = "granian" if interface == "granian" else "bridge"
    flags = ("--keepalive-timeout", "1") if engine == "granian" else ()
    pool = Pool(tmp, APPS[interface], *flags, workers=1, wsgi_engine=engine).start()
    if engine == "granian":
        NO_HALF_CLOSE.add(pool.port)
    try:
        yield HostilePool(pool, interface)
    finally:
        pool.close()
