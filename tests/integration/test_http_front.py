"""The HTTP front line on a real pool: limits, timeouts, prompt stops, errors, and what gunicorn users expect."""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from corepool.engines.http11 import LINGER_BYTES
from tests.integration.conftest import WSGI_ENGINES, engine_param
from tests.support import get_json, request

APPS = {"asgi": "http_asgi:app", "wsgi": "http_wsgi:app"}


@pytest.fixture
def mode() -> str:
    """The front line is the same in both pool modes: these tests run in preload mode only."""
    return "preload"


@pytest.fixture(params=WSGI_ENGINES)
def wsgi_engine(request: pytest.FixtureRequest) -> str:
    """Every WSGI case here runs on both WSGI engines."""
    return engine_param(request)


@pytest.fixture(params=["asgi", "wsgi"])
def app(request: pytest.FixtureRequest, wsgi_engine: str) -> str:
    return APPS[str(request.param)]


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as a close)."""
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data


# 3. Limits and timeouts.


def test_a_request_head_over_max_header_bytes_gets_431_and_close(pool_factory: Any, app: str) -> None:
    pool = pool_factory(app, "--max-header-bytes", "4096", workers=1).start()
    with connect(pool.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()
    status, _, _ = request(pool.port, headers={"X-Small": "a" * 3000})  # under the limit: served
    assert status == 200


def test_a_huge_header_is_refused_as_it_arrives_and_the_worker_keeps_serving(
    pool_factory: Any, wsgi_engine: str
) -> None:
    pool = pool_factory(APPS["wsgi"], workers=1).start()
    before = pool.pids()
    sent = 0
    block = b"a" * 65536
    with connect(pool.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        try:
            while sent < 256 * 1024 * 1024:
                sock.sendall(block)
                sent += len(block)
        except OSError:  # the server closed the connection while we were still sending
            pass
    # Refused at the 32 KiB default as it arrived, then read and dropped (the lingering close that lets the 431
    # reach the client) up to LINGER_BYTES at most: cut off there, not after the 256 MB a careless parser buffers.
    assert sent < LINGER_BYTES + 16 * 1024 * 1024, sent
    assert get_json(pool.port)["pid"] in before
    assert pool.pids() == before


def test_a_head_not_complete_within_header_timeout_gets_408(pool_factory: Any, app: str, wsgi_engine: str) -> None:
    pool = pool_factory(app, "--header-timeout", "1", workers=1).start()
    # granian (hyper) closes a late head without an answer (README, Engines): the connection still ends.
    want = b"" if app == APPS["wsgi"] and wsgi_engine == "granian" else b"HTTP/1.1 408 "
    with connect(pool.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        answer = read_until_closed(sock)
    assert answer.startswith(want) and (want or answer == b""), answer[:200]
    with connect(pool.port) as idle:  # a connection that never sends a byte is closed as well
        assert read_until_closed(idle).startswith(want)


def test_a_silent_body_closes_the_connection_and_the_app_sees_a_disconnect(pool_factory: Any, app: str,
                                                                          wsgi_engine: str) -> None:
    if app == APPS["wsgi"] and wsgi_engine == "granian":
        pytest.skip("granian has no body timeout: a silent body holds its app thread (README, Engines)")
    pool = pool_factory(app, "--body-timeout", "1", workers=1).start()
    with connect(pool.port) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")  # then silence
        answer = read_until_closed(sock)
    assert answer == b""  # closed, no answer: the body never came
    if app == APPS["asgi"]:
        deadline = time.monotonic() + 10
        while "body: disconnect after 3 bytes" not in pool.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "body: disconnect after 3 bytes" in pool.log()
    assert get_json(pool.port)["pid"] in pool.pids()


def test_a_body_over_max_body_bytes_gets_413(pool_factory: Any, app: str) -> None:
    pool = pool_factory(app, "--max-body-bytes", "1000", workers=1).start()
    status, headers, _ = request(pool.port, "POST", "/body", body=b"x" * 1001)
    assert status == 413 and headers["connection"] == "close"
    status, _, data = request(pool.port, "POST", "/body", body=b"x" * 1000)
    assert status == 200 and json.loads(data)["size"] == 1000
    # Chunked: counted as it comes.
    with connect(pool.port) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"258\r\n" + b"x" * 600 + b"\r\n")
        sock.sendall(b"258\r\n" + b"x" * 600 + b"\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_a_wsgi_body_is_gathered_before_the_app_runs_with_100_continue_and_in_pieces(
    pool_factory: Any, wsgi_engine: str
) -> None:
    pool = pool_factory(APPS["wsgi"], workers=1).start()
    with connect(pool.port) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        for _ in range(20):  # in pieces, past the 64 KiB after which the app starts and reads the rest
            sock.sendall(b"x" * 10000)
            time.sleep(0.01)
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and json.loads(answer.split(b"\r\n\r\n", 1)[1])["size"] == 200000


def test_an_oversized_declared_body_is_refused_before_the_app_runs(pool_factory: Any, wsgi_engine: str) -> None:
    pool = pool_factory(APPS["asgi"], "--max-body-bytes", "1000", workers=1).start()
    with connect(pool.port) as sock:  # Expect: 100-continue, so the client never sends the body
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer
    assert pool.status()["requests"] == 0  # the app never saw it


def test_connections_beyond_max_connections_get_503(pool_factory: Any, app: str, wsgi_engine: str) -> None:
    pool = pool_factory(app, "--max-connections", "3", workers=1).start()
    held = [http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10) for _ in range(3)]
    for conn in held:  # each one accepted and served: three open connections in the worker
        conn.request("GET", "/")
        assert conn.getresponse().read()
    if app == APPS["wsgi"] and wsgi_engine == "granian":
        # granian stops accepting at max_connections (README, Engines): the next connection waits in the backlog
        # (for another worker, or for this one to have room), and is served once a held one closes.
        waiting = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
        waiting.request("GET", "/")
        assert waiting.sock is not None
        waiting.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            waiting.getresponse()
        waiting.sock.settimeout(10)
        held.pop().close()
        assert waiting.getresponse().status == 200
        for conn in [*held, waiting]:
            conn.close()
        return
    status, headers, _ = request(pool.port)
    assert status == 503 and headers["connection"] == "close"
    held.pop().close()
    deadline = time.monotonic() + 10  # the worker notices the close on its next loop turn
    while request(pool.port)[0] != 200:
        assert time.monotonic() < deadline, "a freed connection slot was never reused"
        time.sleep(0.05)
    for conn in held:
        conn.close()


# 6. Errors you can read.


def test_an_exception_in_a_view_is_logged_once_by_the_worker_with_its_traceback(pool_factory: Any, app: str) -> None:
    pool = pool_factory(app, workers=1).start()
    worker = next(iter(pool.pids()))
    status, _, _ = request(pool.port, path="/boom")
    assert status == 500
    error = "ValueError: asgi view failed on purpose" if app == APPS["asgi"] else "KeyError: 'wsgi view failed"
    deadline = time.monotonic() + 10
    while error not in pool.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = pool.log()
    assert text.count(f"GET /boom raised {error.split(':')[0]}") == 1, text
    line = next(line for line in text.splitlines() if "GET /boom raised" in line)
    assert line.startswith(f"corepool[{worker}] worker warning:"), line
    assert "Traceback (most recent call last)" in text and f"http_{app[5:9]}.py" in text
    assert "Exception in ASGI application" not in text
    assert "primary error" not in text


def test_an_app_error_event_carries_worker_generation_and_request_path() -> None:
    from corepool import log
    from corepool.engines.stats import log_app_error

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    log.logger.addHandler(handler)
    try:
        log.bind(worker_pid=4242, generation=7, slot=1)
        try:
            raise RuntimeError("nope")
        except RuntimeError as exc:
            log_app_error("GET /x", exc, "/x", "GET")
    finally:
        log.logger.removeHandler(handler)
        log._bound.clear()
    (record,) = [r for r in records if getattr(r, "EVENT", None) == "app_error"]
    assert (record.WORKER_PID, record.GENERATION, record.SLOT, record.REQUEST_PATH) == (4242, 7, 1, "/x")  # type: ignore[attr-defined]
    assert "RuntimeError: nope" in record.getMessage() and "Traceback" in record.getMessage()


# 8. Stops are prompt.


def test_a_stop_with_an_idle_keepalive_connection_ends_after_keepalive_timeout(pool_factory: Any) -> None:
    pool = pool_factory(APPS["asgi"], "--keepalive-timeout", "1", "--graceful-timeout", "60", workers=1).start()
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    assert not response.will_close
    pool.signal(signal.SIGTERM)
    # Well before graceful_timeout (60 s): the idle connection is closed after keepalive_timeout.
    assert pool.wait_exit(timeout=20) == 0
    assert conn.sock is not None and read_until_closed(conn.sock) == b""  # a clean close, no late answer
    conn.close()


def test_a_request_sent_on_an_idle_connection_during_a_drain_is_answered_with_close(pool_factory: Any,
                                                                                   wsgi_engine: str) -> None:
    # Long enough that the connection outlives a reload on a loaded machine: the drain starts its own timer.
    pool = pool_factory(APPS["wsgi"], "--keepalive-timeout", "60", workers=1).start()
    conn = http.client.HTTPConnection("127.0.0.1", pool.port, timeout=10)
    conn.request("GET", "/")
    first = conn.getresponse()
    old = json.loads(first.read())["pid"]
    assert pool.ctl("reload", "--wait").returncode == 0  # the old worker is draining, our connection idle on it
    if wsgi_engine == "granian":  # hyper closes an idle connection when the drain starts (README, Engines)
        assert conn.sock is not None and read_until_closed(conn.sock) == b""
        conn.close()
        return
    conn.request("GET", "/")
    second = conn.getresponse()
    assert json.loads(second.read())["pid"] == old and second.will_close
    conn.close()


# 9. What gunicorn and uvicorn users reach for.


def test_root_path_mounts_the_app_under_a_prefix(pool_factory: Any, app: str) -> None:
    pool = pool_factory(app, "--root-path", "/api", workers=1).start()
    seen = get_json(pool.port, "/items")  # the proxy strips the prefix (nginx: proxy_pass http://pool/;)
    assert seen["root_path"] == "/api"  # ASGI root_path, WSGI SCRIPT_NAME
    assert seen["path"] == ("/api/items" if app == APPS["asgi"] else "/items")  # ASGI path includes root_path


def test_server_and_date_headers_can_be_turned_off(pool_factory: Any, app: str, wsgi_engine: str) -> None:
    on = pool_factory(app, workers=1).start()
    _, headers, _ = request(on.port)
    assert headers.get("server") == "corepool" and "date" in headers
    off = pool_factory(app, "--no-server-header", "--no-date-header", workers=1).start()
    _, headers, _ = request(off.port)
    if app == APPS["wsgi"] and wsgi_engine == "granian":  # granian cannot leave either out (README, Engines)
        assert headers.get("server") == "granian" and "date" in headers
        return
    assert "server" not in headers and "date" not in headers


def test_access_log_uses_gunicorn_atoms(pool_factory: Any, app: str) -> None:
    fmt = 'ACCESS %(h)s "%(r)s" %(s)s %(b)s %({x-trace}i)s %({content-type}o)s %(p)s %(Z)s'
    pool = pool_factory(app, "--access-log", "--access-log-format", fmt, workers=1).start()
    worker = next(iter(pool.pids()))
    status, _, data = request(pool.port, path="/hello?x=1", headers={"X-Trace": "t-42"})
    assert status == 200
    want = f'ACCESS 127.0.0.1 "GET /hello?x=1 HTTP/1.1" 200 {len(data)} t-42 application/json <{worker}> -'
    deadline = time.monotonic() + 10
    while want not in pool.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert want in pool.log()



_WATCH = """
import signal, sys, threading, types
got = threading.Event()
signal.signal(signal.SIGUSR2, lambda *_: got.set())
from corepool import devreload, log
log.setup("info")
watcher = devreload.start(types.SimpleNamespace(app_dir=sys.argv[1]))
print("started", flush=True)
ok = got.wait(60)
watcher.stop()
print("signalled" if ok else "no signal", flush=True)
"""


# --reload is the optional corepool[reload] extra (scripts/setup installs it; Debian's package does not depend on it)
needs_watchfiles = pytest.mark.skipif(importlib.util.find_spec("watchfiles") is None,
                                      reason="watchfiles is not installed (the corepool[reload] extra)")


@needs_watchfiles
def test_devreload_sends_sigusr2_when_a_py_file_changes(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WATCH, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        # The watch starts in a thread we cannot see: change files until the signal comes (or the script gives up).
        round_ = 0
        while proc.poll() is None:
            (tmp_path / "notes.txt").write_text(f"{round_}\n")  # not Python: never a reload
            (tmp_path / "app.py").write_text(f"VALUE = {round_}\n")
            round_ += 1
            time.sleep(0.5)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == "signalled", err
    reloads = [line for line in err.splitlines() if "rolling the pool" in line]
    assert reloads and "app.py" in reloads[0] and "notes.txt" not in err


def test_devreload_without_watchfiles_raises_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from corepool import devreload

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles now raises ImportError
    with pytest.raises(devreload.DevReloadUnavailable, match="watchfiles"):
        devreload.start(types.SimpleNamespace(app_dir="."))


@needs_watchfiles
def test_reload_flag_rolls_the_pool_when_the_app_changes(pool_factory: Any, tmp_path: Path) -> None:
    app_dir = tmp_path / "src"
    app_dir.mkdir()
    (app_dir / "devapp.py").write_text((Path(__file__).parents[1] / "apps" / "http_asgi.py").read_text())
    pool = pool_factory("devapp:app", "--app-dir", str(app_dir), "--reload", workers=1).start()
    assert get_json(pool.port)["generation"] == 1
    source = (app_dir / "devapp.py").read_text()
    deadline = time.monotonic() + 60
    while pool.status()["generation"] < 2:  # rewritten until seen: the watch starts in a thread of the primary
        assert time.monotonic() < deadline, pool.log()
        (app_dir / "devapp.py").write_text(source + f"\nCHANGED = {time.monotonic()}\n")
        time.sleep(1)
    pool.wait_for(lambda s: s["workers_ready"] == 1 and s["phase"] == "running", 60)
    assert get_json(pool.port)["generation"] >= 2


def test_access_line_atoms() -> None:
    from corepool.engines.front import access_line

    scope = {"type": "http", "method": "POST", "path": "/a b", "query_string": b"x=1", "http_version": "1.1",
             "client": ("10.0.0.1", 5), "headers": [(b"referer", b"http://r/"), (b"user-agent", b"ua/1"),
                                                     (b"x-id", b"7")]}
    os.environ["COREPOOL_TEST_ATOM"] = "env"
    try:
        line = access_line("%(h)s %(l)s %(u)s %(r)s %(m)s %(U)s %(q)s %(H)s %(s)s %(B)s %(b)s %(f)s %(a)s "
                           "%(T)s %(D)s %(M)s %(L)s %({x-id}i)s %({Content-Type}o)s %({COREPOOL_TEST_ATOM}e)s "
                           "%(nope)s %(t)s", scope, 201, [(b"content-type", b"text/plain")], 0, 1.5, now=0.0)
    finally:
        del os.environ["COREPOOL_TEST_ATOM"]
    assert line.startswith('10.0.0.1 - - POST /a b?x=1 HTTP/1.1 POST /a b x=1 HTTP/1.1 201 0 - http://r/ ua/1 '
                           '1 1500000 1500 1.500000 7 text/plain env - [')
    assert access_line("%(s)s %(b)s", scope, 0, [], 12, 0.0) == "- 12"  # no answer (the client left)
    assert "bad access_log_format" in access_line("%(h)d", scope, 200, [], 0, 0.0)
