"""Slow clients (issue 10 item 3): slowloris heads and trickled bodies cost connections, never app threads or
workers, and ordinary requests keep being answered promptly."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support import request

_SLOW_CLIENTS = """
import socket, sys, time
port = int(sys.argv[1])
slow = []
for i in range(550):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if i < 500:  # slowloris: a head that never ends
        sock.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n")
    else:  # a 100 MB body, 10 bytes of it
        sock.sendall(b"POST /body HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100000000\\r\\n\\r\\n0123456789")
    slow.append(sock)
print("ready", flush=True)
while True:  # a header line / a body byte every second, inside header_timeout and body_timeout
    for i, sock in enumerate(slow):
        try:
            sock.send(b"X-Slow: %d\\r\\n" % i if i < 500 else b"x")
        except OSError:
            pass
    time.sleep(1)
"""


def test_slow_clients_cost_connections_not_availability(pool_factory: Any) -> None:
    """500 slowloris + 50 slow-body connections for ~8 s on a 2-worker WSGI pool.

    Ordinary requests must keep a p99 under 100 ms, no worker may be killed and no app thread taken. Default
    timeouts: the slow clients stay inside them. They run in a process of their own, so their sends do not
    compete with the measuring client for this process's GIL.
    """
    pool = pool_factory("http_wsgi:app", "--health-interval", "0.5", "--health-timeout", "1", workers=2).start()
    before = pool.pids()
    slow = subprocess.Popen([sys.executable, "-c", _SLOW_CLIENTS, str(pool.port)], stdout=subprocess.PIPE,
                            text=True)
    latencies: list[float] = []
    try:
        assert slow.stdout is not None and slow.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            start = time.monotonic()
            status, _, _ = request(pool.port, headers={"Connection": "close"})
            latencies.append(time.monotonic() - start)
            assert status == 200
            time.sleep(0.01)
        status_now = pool.status()  # while every slow client is still connected
        assert slow.poll() is None  # and they were, all along
    finally:
        slow.terminate()
        slow.wait(10)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"slow clients: {len(latencies)} requests, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")
    assert len(latencies) > 100
    assert p99 < 0.1, f"p99 {p99 * 1000:.1f} ms over {len(latencies)} requests"
    assert {w["pid"] for w in status_now["workers"]} == before  # nobody was killed
    assert sum(w["busy_threads"] for w in status_now["workers"]) == 0  # slow bodies hold no WSGI app thread
    assert "no pong" not in pool.log()


_SLOW_UPLOADS = """
import socket, sys, time
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
uploads = []
for _ in range(count):  # a 100-byte body, one byte every 0.5 s: inside body_timeout, far past request_timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /body HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 100\\r\\n\\r\\n")
    uploads.append(sock)
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    for sock in uploads:
        sock.send(b"x")
    time.sleep(0.5)
print("done", flush=True)
"""


@pytest.mark.parametrize("app", ["http_wsgi:app", "http_asgi:app"])
def test_a_slow_upload_costs_a_connection_never_a_worker(pool_factory: Any, app: str, wsgi_engine: str) -> None:
    """request_timeout counts the app's time, not the client's: uploads that trickle for twice request_timeout
    (two per worker, so that every worker gets some) replace no worker, and ordinary requests are answered all
    along. Before, each one got its worker replaced "over request_timeout"."""
    pool = pool_factory(app, "--request-timeout", "2", "--health-interval", "0.3", "--health-timeout", "2",
                        workers=2).start()
    before = pool.pids()
    uploads = subprocess.Popen([sys.executable, "-c", _SLOW_UPLOADS, str(pool.port), "4", "4.5"],
                               stdout=subprocess.PIPE, text=True)
    latencies: list[float] = []
    try:
        assert uploads.stdout is not None and uploads.stdout.readline() == "ready\n"
        while uploads.poll() is None:
            start = time.monotonic()
            status, _, _ = request(pool.port, headers={"Connection": "close"})
            latencies.append(time.monotonic() - start)
            assert status == 200
            time.sleep(0.02)
        assert uploads.stdout.readline() == "done\n"
        assert pool.pids() == before  # still there, and still ready
    finally:
        uploads.kill()
        uploads.wait(10)
    latencies.sort()
    print(f"slow uploads: {len(latencies)} ordinary requests, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms")
    assert "over request_timeout" not in pool.log()
    assert all(not deaths for deaths in (s["deaths"] for s in pool.status()["slots"])), pool.status()["slots"]
