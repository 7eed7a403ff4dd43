"""The health endpoint's verdict in every phase of the pool (pure), and its HTTP responder on a real socket."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator

import pytest

from corepool import events as ev
from corepool import health
from corepool.health import HealthServer, Verdict
from corepool.listeners import bind
from tests.unit.test_policy import Harness


def running(workers: int = 2) -> Harness:
    h = Harness(workers=workers, health_interval=1000.0)
    h.start()
    h.ready_all()
    return h


def test_every_phase_has_its_answer_and_reason() -> None:
    h = Harness(workers=2, health_endpoint=True, health_interval=1000.0, drain_seconds=10.0)
    assert health.verdict(h.policy) == Verdict(503, "starting: 0/0 workers ready, generation 1")
    h.start()
    first = next(iter(h.policy.workers))
    h.feed(ev.WorkerReady(first, h.now))
    assert health.verdict(h.policy) == Verdict(503, "starting: 1/2 workers ready, generation 1")
    h.ready_all()
    assert health.verdict(h.policy) == Verdict(200, "ok: 2/2 workers ready, generation 1")

    h.feed(ev.ReloadRequested(h.now, "test"))
    v = health.verdict(h.policy)
    assert (v.code, v.reason) == (200, "ok: 2/2 workers ready, generation 1, reloading to generation 2")

    h.feed(ev.HostDrainRequested(h.now, then_stop=False))
    v = health.verdict(h.policy)
    assert v.code == 503 and v.reason.startswith("draining:") and "until cancelled" in v.reason, v
    h.feed(ev.HostDrainCancelled(h.now))
    assert health.verdict(h.policy).code == 200

    h.feed(ev.HostDrainRequested(h.now, then_stop=True))
    v = health.verdict(h.policy)
    assert v.code == 503 and "then stopping" in v.reason and "still serving" in v.reason, v
    h.at(h.now + 10.0)  # the drain is over: the graceful stop begins
    v = health.verdict(h.policy)
    assert v.code == 503 and v.reason.startswith("stopping:"), v


def test_a_crashed_worker_degrades_but_keeps_the_host_in_the_balancer() -> None:
    h = running()
    wid = h.ready()[0]
    h.exit(wid)  # replaced at once; its successor is booting
    v = health.verdict(h.policy)
    assert (v.code, v.reason) == (200, "degraded: 1/2 workers ready, generation 1")
    h.ready_all()
    assert health.verdict(h.policy).code == 200


def test_no_ready_worker_is_unavailable() -> None:
    h = running(workers=1)
    h.exit(h.ready()[0])
    v = health.verdict(h.policy)
    assert (v.code, v.reason) == (503, "unavailable: no ready worker; 0/1 workers ready, generation 1")


def test_a_socket_named_health_is_split_off() -> None:
    lst = [bind("127.0.0.1:0", 8), bind("health=127.0.0.1:0", 8), bind("metrics=127.0.0.1:0", 8)]
    try:
        found, rest = health.take_listener(lst)
        assert found is lst[1]
        assert [x.name for x in rest] == ["http", "metrics"]
    finally:
        for x in lst:
            x.close()


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, int, list[Verdict]]]:
    verdicts = [Verdict(200, "ok: 2/2 workers ready, generation 1")]
    selector = selectors.DefaultSelector()
    srv = HealthServer(selector, lambda: verdicts[0], bind="127.0.0.1:0")
    srv.open()
    assert srv.listener is not None
    port = srv.listener.sock.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for key, mask in selector.select(0.05):
                key.data(mask)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield srv, port, verdicts
    stop.set()
    thread.join()
    srv.close()
    selector.close()


def ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_http_get_head_and_refusals(server: tuple[HealthServer, int, list[Verdict]]) -> None:
    srv, port, verdicts = server
    ok = ask(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nok: 2/2 workers ready, generation 1\n")
    assert b"Connection: close\r\n" in ok and b"Content-Length: 36\r\n" in ok
    verdicts[0] = Verdict(503, "draining: leaving")
    head = ask(port, b"HEAD / HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and head.endswith(b"\r\n\r\n")
    assert ask(port, b"POST / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert ask(port, b"hello\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert ask(port, b"GET /" + b"x" * 9000).startswith(b"HTTP/1.1 431 ")
    assert srv.answered == 2


def test_idle_connections_are_bounded(server: tuple[HealthServer, int, list[Verdict]]) -> None:
    srv, port, _ = server
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(health.MAX_CONNECTIONS + 8)]
    try:
        # The oldest were dropped to make room; a check still gets its answer.
        assert ask(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
        assert idle[0].recv(10) == b""
        assert len(srv.connections) <= health.MAX_CONNECTIONS
    finally:
        for sock in idle:
            sock.close()
