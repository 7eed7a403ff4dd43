"""The load-balancer health endpoint (issue 12 item 2): 200/503 with the reason in every phase of a real pool,
``corepool drain`` turning it to 503 while requests still succeed, and a stop that drains first."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.conftest import Pool
from tests.support import Load, free_port, get_json, inflight


def health(port: int, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, "/health")
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()


def wait_health(port: int, predicate: Callable[[int, str], bool], what: str, timeout: float = 30) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    last: tuple[int, str] | None = None
    while time.monotonic() < deadline:
        try:
            last = health(port)
        except OSError:  # not bound yet
            last = None
        if last is not None and predicate(*last):
            return last
        time.sleep(0.02)
    raise AssertionError(f"health never became {what}; last answer {last}")


def make_pool(tmp_path: Path, *flags: str, **env: str) -> tuple[Pool, int]:
    hport = free_port()
    pool = Pool(tmp_path, "fleet_app:app", "--health-bind", f"127.0.0.1:{hport}", *flags, env=env)
    return pool, hport


def test_health_answers_in_every_phase_with_the_reason(tmp_path: Path) -> None:
    boot, release = tmp_path / "boot", tmp_path / "release"
    pool, hport = make_pool(tmp_path, "--drain-seconds", "60", "--graceful-timeout", "30",
                            FLEET_BOOT_FLAG=str(boot))
    pool.start(wait=False)
    try:
        code, body = wait_health(hport, lambda c, b: True, "answered")
        assert code == 503 and body.startswith("starting: 0/"), body
        boot.touch()
        pool.wait_running()
        assert health(hport) == (200, "ok: 2/2 workers ready, generation 1")
        assert health(hport, "HEAD") == (200, "")

        # A reload keeps capacity (surge first): the host stays in the balancer while it rolls.
        boot.unlink()
        reload = subprocess.Popen([sys.executable, "-m", "corepool", "reload", "--wait", "--control", pool.control],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pool.wait_for(lambda s: s["reloading"], what="a reload in progress")
        assert health(hport) == (200, "ok: 2/2 workers ready, generation 1, reloading to generation 2")
        boot.touch()
        assert reload.wait(timeout=60) == 0, reload.communicate()[0]
        assert health(hport) == (200, "ok: 2/2 workers ready, generation 2")

        # corepool drain: 503 while every worker still serves; cancel: 200 again.
        out = pool.ctl("drain")
        assert out.returncode == 0 and "draining: health 503" in out.stdout, out
        code, body = health(hport)
        assert code == 503 and body.startswith("draining:") and "until cancelled" in body, body
        assert all(get_json(pool.port)["version"] == "1" for _ in range(10))
        status = pool.status()
        assert status["health"]["code"] == 503 and status["health"]["draining"], status["health"]
        assert pool.ctl("drain", "--cancel").returncode == 0
        assert health(hport) == (200, "ok: 2/2 workers ready, generation 2")

        # SIGTERM (systemctl stop): drain first, still serving; a second SIGTERM stops at once (gracefully).
        held: list[Any] = []
        holder = threading.Thread(target=lambda: held.append(get_json(pool.port, f"/hold?flag={release}", 60)))
        holder.start()
        pool.wait_for(lambda s: inflight(s) == 1, what="the held request in flight")
        pool.signal(signal.SIGTERM)
        code, body = wait_health(hport, lambda c, b: c == 503, "503 after SIGTERM")
        assert body.startswith("draining:") and "then stopping" in body, body
        assert get_json(pool.port)["pid"] > 0
        assert pool.proc is not None and pool.proc.poll() is None
        pool.signal(signal.SIGTERM)
        code, body = wait_health(hport, lambda c, b: b.startswith("stopping:"), "stopping")
        assert code == 503
        release.touch()
        holder.join(timeout=30)
        assert held and held[0]["pid"] > 0  # the in-flight request finished
        assert pool.wait_exit() == 0
        log = pool.log()
        assert "SIGTERM: draining the host for 60s, then a graceful stop" in log
        assert "SIGTERM: graceful stop" in log
    finally:
        release.touch()
        boot.touch()
        pool.close()


def _listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found


def test_drain_under_load_loses_nothing_then_drain_stop_exits_cleanly(tmp_path: Path) -> None:
    pool, hport = make_pool(tmp_path, "--drain-seconds", "1")
    pool.start()
    try:
        # The health socket is the primary's alone: no worker (or loader) holds it.
        inode = _listening_inode(hport)
        assert inode in _socket_inodes(pool.pid)
        status = pool.status()
        for pid in [w["pid"] for w in status["workers"]] + [x["pid"] for x in status["loaders"]]:
            assert inode not in _socket_inodes(pid), f"process {pid} holds the health socket"

        with Load(pool.port, keepalive=2, fresh=2) as load:
            pool.wait_for(lambda s: s["requests"] > 20, what="some load served")
            assert pool.ctl("drain").returncode == 0
            assert health(hport)[0] == 503
            served = load.result.ok
            pool.wait_for(lambda s: load.result.ok > served + 50, what="requests served while draining")
            assert health(hport)[0] == 503
        result = load.result
        assert result.failed == 0, result.errors[:5]
        assert result.ok > 50

        out = pool.ctl("drain", "--stop")
        assert out.returncode == 0 and "then a graceful stop" in out.stdout, out
        assert health(hport)[0] == 503
        assert pool.wait_exit() == 0
    finally:
        pool.close()


def test_drain_needs_a_health_endpoint(tmp_path: Path) -> None:
    pool = Pool(tmp_path, "fleet_app:app")
    pool.start()
    try:
        out = pool.ctl("drain")
        assert out.returncode == 1 and "no health endpoint" in out.stderr, out
        assert pool.status()["health"] is None
        pool.signal(signal.SIGTERM)  # no health endpoint: a stop is a stop, as before
        assert pool.wait_exit() == 0
        assert "SIGTERM: graceful stop" in pool.log()
    finally:
        pool.close()


def test_a_socket_named_health_is_the_endpoint_not_the_app(tmp_path: Path) -> None:
    """``--bind health=ADDR`` (or a systemd socket named health): answered by the primary, never by a worker."""
    hport = free_port()
    pool = Pool(tmp_path, "fleet_app:app", "--bind", f"health=127.0.0.1:{hport}")
    pool.start()
    try:
        assert health(hport) == (200, "ok: 2/2 workers ready, generation 1")
        status = pool.status()
        assert [x["name"] for x in status["listeners"]] == ["http"]
        assert status["health"]["address"] == f"127.0.0.1:{hport}"
        assert get_json(pool.port)["version"] == "1"
    finally:
        pool.close()
