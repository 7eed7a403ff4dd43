"""Broadcast across hosts over Redis (issue 12 item 1), against Debian's redis-server started here on a free
loopback port: two pools stand in for two hosts, two workers each."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Pool
from tests.integration.test_notify import NotifySocket
from tests.support import APPS, Load, Worker, free_port, workers

redis = pytest.importorskip("redis")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A throwaway redis-server: no persistence, loopback only, stopped by its pid."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.tmp / "redis.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir {self.tmp}\n"
                        "daemonize no\nlogfile \"\"\n")
        self.proc = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.proc.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not answer"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def host(tmp: Path, name: str, url: str, channel: str, **env: str) -> Pool:
    tmp.mkdir()
    # A long keep-alive: the test's connection to each worker stays with that worker while Redis is away.
    return Pool(tmp, "fleet_app:app", "--broadcast", url, "--broadcast-channel", channel, "--keepalive-timeout", "300",
                env={"FLEET_HOST": name, **env})


def connected(pool: Pool, value: bool = True) -> dict[str, Any]:
    return pool.wait_for(lambda s: s["broadcast"]["connected"] is value,
                         what=f"broadcast connected={value}")["broadcast"]


def wait_received(everyone: list[Worker], ids: set[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        missing = {w.pid: sorted(ids - set(w.get("/received")["ids"])) for w in everyone}
        if not any(missing.values()):
            return
        assert time.monotonic() < deadline, f"not received: {missing}"
        time.sleep(0.05)


def exchange(a: list[Worker], b: list[Worker], tag: str) -> None:
    """One broadcast from each host's first worker; every other worker of both hosts gets each exactly once.

    Then a marker from each host, delivered to the other host through Redis after any echo of the first
    broadcasts could have arrived (one channel keeps its order): so a duplicate would be seen."""
    assert a[0].get(f"/broadcast?id={tag}-a")["ok"]
    assert b[0].get(f"/broadcast?id={tag}-b")["ok"]
    wait_received([a[1], *b], {f"{tag}-a"})
    wait_received([*a, b[1]], {f"{tag}-b"})
    assert a[1].get(f"/broadcast?id={tag}-end-a")["ok"]
    assert b[1].get(f"/broadcast?id={tag}-end-b")["ok"]
    wait_received([a[0], *b], {f"{tag}-end-a"})
    wait_received([*a, b[0]], {f"{tag}-end-b"})
    for w in [*a, *b]:
        ids = [i for i in w.get("/received")["ids"] if i.startswith(f"{tag}-")]
        sent = {a[0].pid: f"{tag}-a", b[0].pid: f"{tag}-b", a[1].pid: f"{tag}-end-a", b[1].pid: f"{tag}-end-b"}
        expected = sorted({f"{tag}-a", f"{tag}-b", f"{tag}-end-a", f"{tag}-end-b"} - {sent[w.pid]})
        assert sorted(ids) == expected, (w.pid, ids)  # exactly once each; never its own


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_a_broadcast_reaches_every_worker_of_both_hosts_exactly_once(redis_server: RedisServer,
                                                                      tmp_path: Path) -> None:
    channel = f"corepool-test-{uuid.uuid4().hex[:8]}"
    pool_a = host(tmp_path / "a", "a", redis_server.url, channel)
    pool_b = host(tmp_path / "b", "b", redis_server.url, channel)
    a: list[Worker] = []
    b: list[Worker] = []
    try:
        pool_a.start()
        pool_b.start()
        connected(pool_a)
        connected(pool_b)
        a, b = workers(pool_a.port), workers(pool_b.port)
        exchange(a, b, "first")
        # The bridge's counts reach the primary within a moment (they are sent at most every 0.1 s).
        status = pool_a.wait_for(lambda s: s["broadcast"]["published"] == 2 and s["broadcast"]["received"] == 2,
                                 what="the bridge's counts")["broadcast"]
        assert not status["dropped"] and not status["duplicates"], status
        assert status["url"] == redis_server.url and status["channel"] == channel
    finally:
        for w in [*a, *b]:
            w.conn.close()  # an idle keep-alive connection would hold its draining worker for keepalive_timeout
        pool_a.close()
        pool_b.close()


def test_lost_redis_loses_no_request_and_broadcasts_resume(redis_server: RedisServer, tmp_path: Path) -> None:
    channel = f"corepool-test-{uuid.uuid4().hex[:8]}"
    notify = NotifySocket(tmp_path / "notify.sock")
    metrics_port = free_port()
    pool_a = host(tmp_path / "a", "a", redis_server.url, channel, NOTIFY_SOCKET=notify.path)
    pool_a.argv += ["--metrics-bind", f"127.0.0.1:{metrics_port}"]
    pool_b = host(tmp_path / "b", "b", redis_server.url, channel)
    a: list[Worker] = []
    b: list[Worker] = []
    try:
        pool_a.start()
        pool_b.start()
        connected(pool_a)
        connected(pool_b)
        a, b = workers(pool_a.port), workers(pool_b.port)
        with Load(pool_a.port, keepalive=2, fresh=2) as load_a, Load(pool_b.port, keepalive=2, fresh=2) as load_b:
            exchange(a, b, "before")
            redis_server.kill()
            down = connected(pool_a, False)
            connected(pool_b, False)
            assert down["state"] == "down, reconnecting" and down["error"], down
            notify.read(until=lambda m: "broadcast: redis down" in m.get("STATUS", ""))
            assert "corepool_broadcast_backend_up 0.0" in scrape(metrics_port)
            # Local broadcast goes on without Redis; what could not reach the other host is counted.
            assert a[0].get("/broadcast?id=alone")["ok"]
            wait_received([a[1]], {"alone"})
            pool_a.wait_for(lambda s: s["broadcast"]["dropped"].get("redis down", 0) >= 1, what="a counted drop")
            served = (load_a.result.ok, load_b.result.ok)
            pool_a.wait_for(lambda s: load_a.result.ok > served[0] + 20 and load_b.result.ok > served[1] + 20,
                            what="both pools serving without Redis")

            redis_server.start()
            back = connected(pool_a)
            connected(pool_b)
            assert back["reconnects"] == 1, back
            assert "corepool_broadcast_backend_up 1.0" in scrape(metrics_port)
            exchange(a, b, "after")
        for load in (load_a, load_b):
            assert load.result.failed == 0, load.result.errors[:5]
            assert load.result.ok > 0
        assert "alone" not in [i for w in b for i in w.get("/received")["ids"]]
        log = pool_a.log()
        assert "broadcast: lost redis at" in log and "broadcast: redis back after" in log
    finally:
        for w in [*a, *b]:
            w.conn.close()  # an idle keep-alive connection would hold its draining worker for keepalive_timeout
        pool_a.close()
        pool_b.close()
        notify.sock.close()


def test_a_killed_bridge_is_replaced(redis_server: RedisServer, tmp_path: Path) -> None:
    channel = f"corepool-test-{uuid.uuid4().hex[:8]}"
    pool_a = host(tmp_path / "a", "a", redis_server.url, channel)
    pool_b = host(tmp_path / "b", "b", redis_server.url, channel)
    a: list[Worker] = []
    b: list[Worker] = []
    try:
        pool_a.start()
        pool_b.start()
        bridge = connected(pool_a)["bridge_pid"]
        connected(pool_b)
        os.kill(bridge, signal.SIGKILL)
        status = pool_a.wait_for(lambda s: s["broadcast"]["bridge_pid"] not in (None, bridge)
                                 and s["broadcast"]["connected"], what="a new bridge, subscribed")["broadcast"]
        assert status["state"] == "connected", status
        assert f"the Redis bridge process {bridge} died (killed by SIGKILL); starting another" in pool_a.log()
        a, b = workers(pool_a.port), workers(pool_b.port)
        exchange(a, b, "new-bridge")
    finally:
        for w in [*a, *b]:
            w.conn.close()
        pool_a.close()
        pool_b.close()


@pytest.mark.parametrize("url", ["redis", "http://127.0.0.1:6379/0", "redis://127.0.0.1:99999/0"])
def test_a_bad_broadcast_url_is_a_usage_error(url: str) -> None:
    for command in ("check", "serve"):
        out = subprocess.run([sys.executable, "-m", "corepool", command, "fleet_app:app", "--app-dir", str(APPS),
                              "--broadcast", url], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out
        assert out.stderr.startswith("corepool: error: broadcast") and out.stderr.count("\n") == 1, out.stderr
