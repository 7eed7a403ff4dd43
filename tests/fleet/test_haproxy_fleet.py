"""A fleet behind a real load balancer (issue 12 item 3): Debian's HAProxy in front of two pools standing in for
two hosts, health-checked on their health sockets, under continuous load through HAProxy, with zero failed
client requests through

* a rolling reload of host A then host B by ``scripts/fleet-roll``, gated on ``corepool reload --wait``;
* a drain and stop of host A (``corepool drain --stop``) and its return;
* a bad deploy (a module that fails to import) that stops the fleet roll at host A: the script exits 1 and
  host B is not touched.

HAProxy checks every 200 ms and marks a host down after 2 failed checks (up after 2 good ones); the pools'
drain_seconds (1.5 s) is longer than that, so the balancer has moved traffic away before a stopping host
closes anything.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Pool
from tests.support import APPS, Load, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
ROLL = Path(__file__).parents[2] / "scripts" / "fleet-roll"
DRAIN_SECONDS = "1.5"  # > fall (2) x inter (200 ms), with room for a check that runs late on a busy machine

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed (scripts/setup)")


def deploy(directory: Path, version: str, broken: bool = False) -> None:
    """Write the app's new version where the host's pool imports it from."""
    source = (APPS / "fleet_app.py").read_text().replace('VERSION = "1"', f"VERSION = {version!r}")
    if broken:
        source = 'raise ImportError("fleet_app: a bad deploy, on purpose")\n' + source
    directory.mkdir(exist_ok=True)
    (directory / "fleet_app.py").write_text(source)


class Host:
    """One pool, its app directory and its health port."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.app_dir = tmp / f"app-{name}"
        deploy(self.app_dir, "1")
        (tmp / name).mkdir()
        self.health_port = free_port()
        # PYTHONDONTWRITEBYTECODE: a new version written within the same second as the old one, with the same
        # size, would otherwise be imported from the old one's .pyc.
        self.pool = Pool(tmp / name, "fleet_app:app", "--app-dir", str(self.app_dir),
                         "--health-bind", f"127.0.0.1:{self.health_port}", "--drain-seconds", DRAIN_SECONDS,
                         "--graceful-timeout", "10",
                         env={"FLEET_HOST": name, "PYTHONDONTWRITEBYTECODE": "1"})


class HAProxy:
    def __init__(self, tmp: Path, hosts: list[Host]) -> None:
        self.port = free_port()
        self.stats = str(tmp / "haproxy.sock")
        servers = "\n".join(
            f"    server {h.name} 127.0.0.1:{h.pool.port} check port {h.health_port}" for h in hosts
        )
        self.config = tmp / "haproxy.cfg"
        self.config.write_text(f"""
global
    stats socket {self.stats} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # Without it a check times out after `inter` (200 ms): one late answer from a busy primary would count as a
    # failed check. A check that fails here is a 503, never a slow machine.
    timeout check 2s
    # A request that found a server connection closed under it (an idle keep-alive connection a worker
    # closed as it drained) is retried, on another server if need be: GETs only, as HAProxy does by default.
    retries 3
    retry-on conn-failure empty-response
    option redispatch 1

frontend fleet
    bind 127.0.0.1:{self.port}
    default_backend hosts

backend hosts
    balance roundrobin
    option httpchk
    http-check send meth GET uri /health
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
""")
        self.log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.stats)
            sock.sendall(line.encode() + b"\n")
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        return out.decode()

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's status of it (UP, DOWN, UP 1/2, DOWN 1/2, ...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        found = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "hosts" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                found[row["svname"]] = row["status"]
        return found

    def backend_counters(self) -> dict[str, str]:
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "hosts" and row.get("svname") == "BACKEND":
                return {k: row[k] for k in ("wretr", "wredis", "econ", "eresp")}
        return {}

    def wait(self, name: str, status: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "haproxy exited"
            try:
                states = self.states()
            except OSError:  # the stats socket is not there yet
                states = {}
            if states.get(name) == status:
                return
            time.sleep(0.05)
        raise AssertionError(f"haproxy never saw {name} {status}: {states}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[Host], HAProxy]]:
    hosts = [Host(tmp_path, "a"), Host(tmp_path, "b")]
    proxy: HAProxy | None = None
    try:
        for h in hosts:
            h.pool.start(wait=False)
        for h in hosts:
            h.pool.wait_running()
        proxy = HAProxy(tmp_path, hosts)
        for h in hosts:
            proxy.wait(h.name, "UP")
        yield hosts, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for h in hosts:
            h.pool.close()


def through(port: int, count: int = 20) -> list[dict[str, Any]]:
    answers = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            assert response.status == 200
            answers.append(json.loads(response.read()))
        finally:
            conn.close()
    return answers


def roll(*hosts: Host) -> subprocess.CompletedProcess[str]:
    reload = f"{sys.executable} -m corepool reload --wait --timeout 60 --control {{}}"
    return subprocess.run(["bash", str(ROLL), *[h.pool.control for h in hosts]], env={**os.environ, "RELOAD": reload},
                          capture_output=True, text=True, timeout=150)


def test_fleet_roll_drain_and_bad_deploy_behind_haproxy(fleet: tuple[list[Host], HAProxy]) -> None:
    (a, b), proxy = fleet
    with Load(proxy.port, keepalive=3, fresh=3) as load:
        # 1. A rolling reload of host A, then host B, each gated on `corepool reload --wait`.
        for h in (a, b):
            deploy(h.app_dir, "2")
        out = roll(a, b)
        assert out.returncode == 0, out.stderr
        assert "fleet-roll: all 2 hosts reloaded" in out.stderr
        for h in (a, b):
            status = h.pool.status()
            assert status["generation"] == 2 and status["last_reload"]["ok"], status["last_reload"]
        answers = through(proxy.port)
        assert {x["version"] for x in answers} == {"2"}
        assert {x["host"] for x in answers} == {"a", "b"}

        # 2. Host A drains (HAProxy takes it out), stops, and comes back.
        served_by_a = a.pool.status()["requests"]
        drain = a.pool.ctl("drain", "--stop")
        assert drain.returncode == 0, drain.stderr
        proxy.wait("a", "DOWN")
        assert a.pool.wait_exit() == 0
        assert served_by_a > 0
        ok_before = load.result.ok
        a.pool.log_path = a.pool.tmp / "pool-restarted.log"
        a.pool.start()
        proxy.wait("a", "UP")
        assert load.result.ok > ok_before  # B served meanwhile
        assert {x["host"] for x in through(proxy.port)} == {"a", "b"}

        # 3. A bad deploy: the roll stops at host A (whose old workers keep serving); host B is not touched.
        for h in (a, b):
            deploy(h.app_dir, "3", broken=True)
        b_before = b.pool.status()
        out = roll(a, b)
        assert out.returncode == 1, out.stderr
        assert "reload FAILED" in out.stderr and f"not touched: {b.pool.control}" in out.stderr, out.stderr
        a_after, b_after = a.pool.status(), b.pool.status()
        assert a_after["last_reload"]["ok"] is False and a_after["workers_ready"] == 2, a_after["last_reload"]
        assert b_after["generation"] == b_before["generation"] == 2
        assert b_after["last_reload"] == {**b_before["last_reload"], "ago": b_after["last_reload"]["ago"]}
        assert proxy.states() == {"a": "UP", "b": "UP"}
        answers = through(proxy.port)
        assert {x["version"] for x in answers} == {"2"} and {x["host"] for x in answers} == {"a", "b"}
    result = load.result
    counters = proxy.backend_counters()
    print(f"fleet: {result.ok} requests through HAProxy, {result.failed} failed; HAProxy backend {counters}")
    assert result.failed == 0, result.errors[:10]
    assert result.ok > 100
