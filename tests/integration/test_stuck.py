"""A stuck request says where it is stuck (issue 17 item 3): past request_timeout, the worker logs the stack of
what serves it (a WSGI app thread, an ASGI request's awaits) and the event loop's, and tells the primary at once —
with health_interval far longer than the test, so no ping could have found it; an event loop that stops turning
logs its stack before the health check gives up; a C call holding the GIL still gets faulthandler's dump."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.integration.conftest import WSGI_ENGINES, engine_param


@pytest.fixture
def mode() -> str:
    return "preload"


@pytest.fixture(params=WSGI_ENGINES)
def wsgi_engine(request: pytest.FixtureRequest) -> str:
    return engine_param(request)  # the WSGI test on both engines (the ASGI ones make no WSGI pool)


SLOW_PINGS = ("--health-interval", "60")  # a ping would come after the test is over: only the watch can find it


def start_request(port: int, path: str) -> socket.socket:
    """Send a request and leave it running (the caller closes the socket)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    return sock


def wait_log(pool: Any, predicate: Any, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = str(pool.log())
        if predicate(log):
            return log
        time.sleep(0.1)
    raise AssertionError(f"not in the log within {timeout}s:\n{pool.log()}")


def stuck_until_replaced(pool: Any, path: str, marker: str) -> str:
    """Start ``pool``, leave a request to ``path`` running, wait until ``marker`` is in the log and the worker has
    been replaced; the log as it was when ``marker`` appeared."""
    pool.start()
    old = pool.pids()
    sock = start_request(pool.port, path)
    try:
        log = wait_log(pool, lambda text: marker in text)
        pool.wait_for(lambda s: s["workers_ready"] == 1 and not pool.pids() & old, timeout=20, what="replaced")
    finally:
        sock.close()
    return log


def test_a_wsgi_request_past_its_timeout_logs_its_threads_stack(pool_factory: Any, wsgi_engine: str) -> None:
    pool = pool_factory("stuck_app:wsgi", *SLOW_PINGS, "--request-timeout", "1", "--graceful-timeout", "1",
                        workers=1)
    log = stuck_until_replaced(pool, "/sleep?s=30", "the event loop's stack")
    assert "request GET /sleep running" in log and "over request_timeout (1s)" in log
    assert "its app thread's stack" in log and "in wait_for_the_upstream" in log and "stuck_app.py" in log
    assert "replacing worker" in pool.log()


def test_an_asgi_request_past_its_timeout_logs_where_it_awaits(pool_factory: Any) -> None:
    pool = pool_factory("stuck_app:app", *SLOW_PINGS, "--request-timeout", "1", "--graceful-timeout", "1",
                        workers=1)
    log = stuck_until_replaced(pool, "/await?s=30", "the event loop's stack")
    assert "request GET /await running" in log and "it awaits at:" in log and "in call_the_upstream" in log


def test_a_blocked_event_loop_logs_its_stack_before_the_health_check_kills_it(pool_factory: Any) -> None:
    pool = pool_factory("stuck_app:app", "--health-interval", "0.5", "--health-timeout", "2", "--request-timeout",
                        "0", workers=1)
    log = stuck_until_replaced(pool, "/block?s=30", "event loop stuck for")
    stuck = log[log.index("event loop stuck for"):]
    assert "in wait_for_the_upstream" in stuck and "stuck_app.py" in stuck
    assert "Thread 0x" not in log  # logged by the watch: faulthandler's raw dump was disarmed


def test_a_call_holding_the_gil_still_gets_a_stack_from_faulthandler(pool_factory: Any) -> None:
    pool = pool_factory("stuck_app:app", "--health-interval", "0.5", "--health-timeout", "2", "--request-timeout",
                        "0", workers=1)
    log = stuck_until_replaced(pool, "/gil?s=30", "most recent call first")
    assert "stuck_app.py" in log[log.index("most recent call first"):]
