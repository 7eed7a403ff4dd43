"""What the fleet tests share: pools standing in for hosts (``Host``), Debian's HAProxy in front of them with
health checks on their health sockets (``HAProxy``), a deploy of the fleet app's next version, and plain requests
through the balancer. The ``fleet`` fixture (conftest.py) starts two hosts behind one HAProxy.

HAProxy checks every 200 ms and marks a host down after 2 failed checks (up after 2 good ones); the pools'
drain_seconds (1.5 s) is longer than that, so the balancer has moved traffic away before a stopping host
closes anything.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import Pool
from tests.support import APPS, free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DRAIN_SECONDS = "1.5"  # > fall (2) x inter (200 ms), with room for a check that runs late on a busy machine


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
    # closed as it drained) is retried, on another server if need be. HAProxy replays it whatever the method
    # (a POST too, tried with 2.6): the load here sends GETs only.
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

    def rows(self) -> list[dict[str, str]]:
        """``show stat`` of the backend: one row per server, then the BACKEND row."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return [row for row in rows if row.get("pxname") == "hosts" and row.get("svname") != "FRONTEND"]

    def states(self) -> dict[str, str]:
        """Server name -> HAProxy's status of it (UP, DOWN, UP 1/2, DOWN 1/2, ...)."""
        return {row["svname"]: row["status"] for row in self.rows() if row["svname"] != "BACKEND"}

    def downs(self) -> dict[str, int]:
        """Server name -> how many times HAProxy marked it down (``chkdown``: UP to DOWN transitions)."""
        return {row["svname"]: int(row["chkdown"]) for row in self.rows() if row["svname"] != "BACKEND"}

    def backend_counters(self) -> dict[str, str]:
        for row in self.rows():
            if row["svname"] == "BACKEND":
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
