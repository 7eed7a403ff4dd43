"""WSGI over real HTTP: request bodies arrive whole, responses leave as they are yielded, slow clients pin no
thread, and a client that leaves is noticed, with plain WSGI (under ``wsgiref.validate``), Flask and Django apps
served by a real pool on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import WSGI_ENGINES, Pool, engine_param

SIZE = 20 * 1024 * 1024
DATA = random.Random(3333).randbytes(SIZE)  # random bytes: a newline every ~256 bytes, for readline
WAIT = 30.0  # bound on waits only a broken server reaches


@pytest.fixture(params=WSGI_ENGINES)
def wsgi_engine(request: pytest.FixtureRequest) -> str:
    """Every case here runs on both WSGI engines."""
    return engine_param(request)


@pytest.fixture
def serve(tmp_path: Path, wsgi_engine: str) -> Iterator[Any]:
    pools: list[Pool] = []

    def start(app: str, *flags: str, workers: int = 2) -> Pool:
        pool = Pool(tmp_path / f"pool{len(pools)}", app, "--mode", "preload", *flags, workers=workers,
                    env={"WSGI_TEST_DIR": str(tmp_path)}, wsgi_engine=wsgi_engine)  # fmt: skip
        pool.tmp.mkdir()
        pools.append(pool)
        return pool.start()

    yield start
    for pool in pools:
        pool.close()
        assert "AssertionError" not in pool.log(), pool.log()  # wsgiref.validate found a PEP 3333 violation


def pieces(data: bytes, seed: int) -> Iterator[bytes]:
    """The body in uneven pieces (1 byte to 128 KiB), so that reads and lines straddle their edges."""
    rng, at = random.Random(seed), 0
    while at < len(data):
        size = rng.choice([1, 7, 1000, 65536, 131072])
        yield data[at : at + size]
        at += size


def post(port: int, path: str, body: bytes, chunked: bool, content_type: str = "application/octet-stream",
         pause_every: int = 64) -> tuple[int, bytes]:  # fmt: skip
    """POST ``body`` in uneven pieces with a pause now and then (a slow client); the status and answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Transfer-Encoding" if chunked else "Content-Length", "chunked" if chunked else str(len(body)))
        conn.endheaders()
        for i, piece in enumerate(pieces(body, len(body))):
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            if i % pause_every == 0:
                time.sleep(0.01)
        if chunked:
            conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def form(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def expect_whole(answer: tuple[int, bytes], data: bytes = DATA) -> None:
    status, raw = answer
    assert status == 200, raw[:2000]
    assert json.loads(raw) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def wait_for_file(path: Path) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


# ------------------------------------------------------------------------------------------------ request bodies


@pytest.mark.parametrize("how,chunked", [("read", True), ("read", False), ("readline", True), ("iter", False),
                                         ("multipart", True), ("multipart", False)])  # fmt: skip
def test_plain_wsgi_reads_a_slow_20mb_body_whole(serve: Any, how: str, chunked: bool) -> None:
    pool = serve("wsgi_plain:app")
    if how == "multipart":
        body, ctype = form(DATA)
        expect_whole(post(pool.port, "/upload?how=multipart", body, chunked, ctype))
    else:
        expect_whole(post(pool.port, f"/upload?how={how}", DATA, chunked))


@pytest.mark.parametrize("chunked", [True, False])
def test_flask_reads_a_slow_20mb_body_and_file_whole(serve: Any, chunked: bool) -> None:
    pool = serve("wsgi_flask:app")
    expect_whole(post(pool.port, "/upload", DATA, chunked))
    body, ctype = form(DATA)
    expect_whole(post(pool.port, "/files", body, chunked, ctype))


def test_django_reads_a_slow_20mb_body_and_file_whole(serve: Any) -> None:
    # With a Content-Length only: Django's WSGIRequest reads CONTENT_LENGTH bytes and ignores
    # wsgi.input_terminated, so it sees no chunked body under any WSGI server (gunicorn included).
    pool = serve("wsgi_django:app")
    expect_whole(post(pool.port, "/upload", DATA, chunked=False))
    body, ctype = form(DATA)
    expect_whole(post(pool.port, "/files", body, chunked=False, content_type=ctype))


@pytest.mark.parametrize("app,record", [("wsgi_plain:app", "hold"), ("wsgi_flask:app", "flask-hold")])
@pytest.mark.parametrize("chunked", [True, False])
def test_client_leaving_mid_body_raises_in_the_app(serve: Any, tmp_path: Path, app: str, record: str,
                                                   chunked: bool, wsgi_engine: str) -> None:  # fmt: skip
    if chunked and wsgi_engine == "granian":
        pytest.skip("granian ends a chunked body cut short as if it were whole (README, Engines)")
    pool = serve(app, workers=1)
    with socket.create_connection(("127.0.0.1", pool.port), timeout=WAIT) as sock:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % SIZE
        sock.sendall(b"POST /hold HTTP/1.1\r\nHost: t\r\n%s\r\n\r\n" % framing)
        part = DATA[: 2 * 1024 * 1024]  # past the bytes read before a thread is taken: the app is reading
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        wait_for_file(tmp_path / f"{record}-started")  # the app is reading when the client goes
    assert wait_for_file(tmp_path / record) == "corepool.engines.wsgi.ClientDisconnected\n"
    assert pool.ctl("status").returncode == 0


def test_slow_small_bodies_pin_no_app_thread(serve: Any, wsgi_engine: str) -> None:
    if wsgi_engine == "granian":
        pytest.skip("granian calls the app on its thread before the body is in: a slow body holds a thread "
                    "(README, Engines)")
    pool = serve("wsgi_plain:app", "--threads", "2", workers=1)
    slow = []
    try:
        for _ in range(50):  # each would hold one of the 2 threads if its body were read on a thread
            sock = socket.create_connection(("127.0.0.1", pool.port), timeout=WAIT)
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
            slow.append(sock)
        for _ in range(5):
            conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=WAIT)
            conn.request("GET", "/")
            assert conn.getresponse().status == 200
            conn.close()
        for sock in slow[:3]:  # and the slow ones are answered once they finish
            sock.sendall(b"y" * 990)
            response = http.client.HTTPResponse(sock)
            response.begin()
            expect_whole((response.status, response.read()), b"x" * 10 + b"y" * 990)
    finally:
        for sock in slow:
            sock.close()


def test_environ_over_the_wire(serve: Any, wsgi_engine: str) -> None:
    pool = serve("wsgi_plain:app", workers=1)
    with socket.create_connection(("127.0.0.1", pool.port), timeout=WAIT) as sock:
        sock.sendall(b"GET /environ/%FF%FE/a%20b?x=%FF HTTP/1.1\r\nHost: t\r\nX-Multi: 1\r\nX-Multi: 2\r\n"
                     b"Connection: close\r\n\r\n")  # fmt: skip
        response = http.client.HTTPResponse(sock)
        response.begin()
        environ = json.loads(response.read())
    assert environ["PATH_INFO"] == "/environ/\xff\xfe/a b" and environ["QUERY_STRING"] == "x=%FF"
    # granian joins a repeated field with "," (README, Engines), the bridge with ", ": the same list (RFC 9110).
    assert environ["HTTP_X_MULTI"] == ("1,2" if wsgi_engine == "granian" else "1, 2")
    assert environ["wsgi.input_terminated"] is True


# ------------------------------------------------------------------------------------------------ responses


@pytest.mark.parametrize("app,path,prefix", [("wsgi_plain:app", "/stream?gap=0.3&id=", ""),
                                             ("wsgi_flask:app", "/stream?id=", ""),
                                             ("wsgi_flask:app", "/sse?id=", "data: ")])  # fmt: skip
def test_streams_reach_the_client_block_by_block(serve: Any, app: str, path: str, prefix: str) -> None:
    # Each block is produced only after the client acknowledged the one before (on another connection, same
    # worker): a server that holds blocks back makes the app give up and say NOACK.
    pool = serve(app, workers=1)
    stream_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=WAIT)
    conn.request("GET", path + stream_id)
    response = conn.getresponse()
    assert response.status == 200
    got = []
    for n in range(10):
        line = response.readline().decode().rstrip("\n")
        if prefix:
            assert response.readline() == b"\n"
        got.append(line)
        ack = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=WAIT)
        ack.request("GET", f"/ack?id={stream_id}&n={n}")
        assert ack.getresponse().status == 200
        ack.close()
    assert got == [f"{prefix}block {n}" for n in range(10)]
    assert response.read() == b""
    conn.close()


def test_client_leaving_mid_stream_stops_it_and_closes_once(serve: Any, tmp_path: Path) -> None:
    pool = serve("wsgi_plain:app", workers=1)
    stream_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=WAIT)
    conn.request("GET", f"/endless?id={stream_id}")
    response = conn.getresponse()
    assert len(response.read(5 * 65536)) == 5 * 65536
    conn.close()
    text = wait_for_file(tmp_path / f"endless-{stream_id}")
    assert text.count("closed") == 1
    time.sleep(0.5)  # not asserted on as a time: a second close() would have had the chance to happen
    assert (tmp_path / f"endless-{stream_id}").read_text() == text
