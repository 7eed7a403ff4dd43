"""The metrics module without a pool: totals that never go down, the exposition, and the endpoint's HTTP."""

from __future__ import annotations

import selectors
import shutil
import socket
import subprocess
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corepool import events as ev
from corepool import listeners, metrics
from corepool.crashpolicy import Cause
from corepool.metrics import Broadcasts, Counters, MetricsServer
from corepool.traffic import BUCKETS, Traffic, bucket_index
from tests.unit.test_policy import EXITED_0, Harness


def served(ok: int, errors: int = 0, seconds: float = 0.002, method: str = "GET") -> Traffic:
    buckets = [0] * (len(BUCKETS) + 1)
    buckets[bucket_index(seconds)] = ok + errors
    requests = {k: n for k, n in (((method, "2xx"), ok), ((method, "5xx"), errors)) if n}
    return Traffic(requests, tuple(buckets), (ok + errors) * seconds)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pool(workers: int = 2) -> Harness:
    h = Harness(workers=workers)
    h.start()
    h.ready_all()
    return h


def test_totals_never_go_down_when_workers_are_replaced() -> None:
    h = pool()
    c = Counters()
    a, b = h.ready()
    c.report(a, served(10))
    c.report(b, served(5, errors=1))
    before = samples(metrics.render(h.policy, c, Broadcasts(), lambda _pid: None))
    assert before[("corepool_requests_total", (("method", "GET"), ("status_class", "2xx")))] == 15
    assert before[("corepool_requests_total", (("method", "GET"), ("status_class", "5xx")))] == 1
    assert before[("corepool_request_duration_seconds_count", ())] == 16
    c.report(a, served(12))  # its last report before it exits
    h.exit(a, EXITED_0)
    (replacement,) = h.booting()
    h.ready_all()
    c.report(replacement, served(1))
    after = samples(metrics.render(h.policy, c, Broadcasts(), lambda _pid: None))
    assert after[("corepool_requests_total", (("method", "GET"), ("status_class", "2xx")))] == 12 + 5 + 1
    assert after[("corepool_request_duration_seconds_bucket", (("le", "+Inf"),))] == 19
    assert a not in c.live and c.retired.total == 12


def test_deaths_reloads_and_canary_verdicts_are_counted_from_reports() -> None:
    c = Counters()
    c.ended(Cause.CRASH)
    c.ended(Cause.RELOAD)
    c.judged(False)
    c.reload_finished(False)
    h = pool()
    got = samples(metrics.render(h.policy, c, Broadcasts(relayed=7, dropped=2), lambda _pid: 4096))
    assert got[("corepool_worker_deaths_total", (("cause", "crash"),))] == 1
    assert got[("corepool_worker_deaths_total", (("cause", "reload"),))] == 1
    assert got[("corepool_worker_deaths_total", (("cause", "health"),))] == 0
    assert got[("corepool_canary_verdicts_total", (("verdict", "rollback"),))] == 1
    assert got[("corepool_reloads_total", (("result", "failed"),))] == 1
    assert got[("corepool_broadcast_messages_total", (("result", "dropped"),))] == 2
    assert got[("corepool_broadcast_messages_total", (("result", "sent"),))] == 7
    assert got[("corepool_workers", (("state", "ready"),))] == 2
    assert got[("corepool_generation", ())] == 1
    rss = [v for (name, _), v in got.items() if name == "corepool_worker_rss_bytes"]
    assert rss == [4096, 4096]


def test_in_flight_threads_and_connections_are_summed_over_workers() -> None:
    h = pool()
    c = Counters()
    for wid in h.ready():
        h.feed(ev.Pong(wid, None, 0, 0.0, inflight=3, busy_threads=2, threads=8))
        c.report(wid, None, connections=4)
    got = samples(metrics.render(h.policy, c, Broadcasts(), lambda _pid: None))
    assert got[("corepool_requests_in_flight", ())] == 6
    assert got[("corepool_wsgi_threads_busy", ())] == 4
    assert got[("corepool_wsgi_threads", ())] == 16
    assert got[("corepool_connections_open", ())] == 8


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) not installed")
def test_promtool_finds_nothing_to_say_about_the_exposition() -> None:
    h = pool()
    c = Counters()
    for i, wid in enumerate(h.ready()):
        c.report(wid, served(10 + i, errors=i, method="POST"))
    c.ended(Cause.CRASH)
    text = metrics.render(h.policy, c, Broadcasts(), lambda _pid: 1 << 20)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_a_socket_named_metrics_is_taken_from_the_apps_sockets() -> None:
    found = [listeners.bind("127.0.0.1:0", 8), listeners.bind("metrics=127.0.0.1:0", 8)]
    try:
        endpoint, rest = metrics.take_listener(found)
        assert endpoint is found[1] and rest == [found[0]]
        assert metrics.take_listener(rest) == (None, rest)
    finally:
        for lst in found:
            lst.close()


# ---------------------------------------------------------------------------------------------- endpoint


def serve_once(request: bytes, body: bytes = b"m 1\n") -> bytes:
    """One connection to a MetricsServer driven by a selector loop, as the primary drives it."""
    sel = selectors.DefaultSelector()
    pending: list[Callable[[bytes], None]] = []
    server = MetricsServer(sel, pending.append, bind="127.0.0.1:0")
    server.open()
    assert server.address is not None
    host, port = server.address.rsplit(":", 1)
    client = socket.create_connection((host, int(port)), timeout=5)
    try:
        client.sendall(request)
        client.setblocking(False)
        answer = b""
        for _ in range(200):
            for key, mask in sel.select(0.05):
                key.data(mask)
            while pending:
                pending.pop()(body)
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return answer
            answer += chunk
        raise AssertionError(f"no end of answer: {answer!r}")
    finally:
        client.close()
        server.close()
        sel.close()


def test_the_endpoint_answers_get_metrics_and_closes() -> None:
    answer = serve_once(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"x" * 300_000)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 300000" in head
    assert b"text/plain; version=0.0.4" in head and body == b"x" * 300_000


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /other HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\n\r\n", b"405"),
    (b"garbage\r\n\r\n", b"400"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000, b"431"),
])
def test_the_endpoint_refuses_what_is_not_a_scrape(request_bytes: bytes, status: bytes) -> None:
    assert serve_once(request_bytes).split(b" ", 2)[1] == status


def test_head_gets_the_headers_only() -> None:
    answer = serve_once(b"HEAD /metrics HTTP/1.0\r\n\r\n", b"abc")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n")


def test_a_retired_workers_report_is_kept_only_in_the_totals() -> None:
    c = Counters()
    for wid in range(1000):
        c.report(wid, served(1), connections=1)
        c.retire(wid)
    assert c.live == {} and c.connections == {}
    assert c.retired.total == 1000
    c.retire(5)  # twice, or a worker that never reported: nothing changes
    assert c.retired.total == 1000
