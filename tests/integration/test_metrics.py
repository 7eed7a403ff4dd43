"""The metrics endpoint on a real pool, scraped by a real Prometheus server (Debian's prometheus package).

The counters must add up to the requests the test sent, across a worker's SIGKILL and a reload. The rule this
relies on, and that the pool guarantees: a scrape pings every worker first, so once a scrape shows every
request sent so far, a worker killed afterwards (before any further request) takes nothing unreported with it;
a worker retired by a reload reports its last counts as it exits.
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
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import APPS, free_port, get_json

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                reason="needs Debian's prometheus package (scripts/setup --test installs it)")


class Prometheus:
    """A Prometheus server on a free loopback port scraping one target every second, with its own storage."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: corepool\n    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus not ready in 60 s"
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, expr: str) -> float | None:
        """The value of an instant query that returns one series (None: no data)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            result = json.load(r)["data"]["result"]
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, expected: float, after: float, timeout: float = 60) -> None:
        """Until a scrape taken after ``after`` (unix time) shows ``expr == expected``; never more than it."""
        deadline = time.monotonic() + timeout
        seen: list[float | None] = []
        while time.monotonic() < deadline:
            stamp = self.query("max(timestamp(corepool_workers_wanted))")
            value = self.query(expr)
            if value is not None:
                assert value <= expected, f"{expr} = {value}, more than the {expected} requests sent"
            if stamp is not None and stamp > after:
                seen.append(value)
                if value == expected:
                    return
            time.sleep(0.2)
        raise AssertionError(f"{expr}: never {expected} after {after}: {seen[-5:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    servers: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        (tmp_path / "prom").mkdir()
        servers.append(Prometheus(tmp_path / "prom", target))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def scrape(port: int, path: str = "/metrics") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def send(port: int, n: int, method: str = "GET") -> None:
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, "/", body=b"x" if method == "POST" else None)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        finally:
            conn.close()


def listening_inode(port: int) -> int:
    """The inode of the IPv4 socket listening on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "0A":
            return int(fields[9])
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def holds_socket(pid: int, inode: int) -> bool:
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == f"socket:[{inode}]":
                return True
        except OSError:
            continue
    return False


def test_prometheus_counts_every_request_across_a_crash_and_a_reload(pool_factory: Any, prometheus: Any) -> None:
    mport = free_port()
    pool = pool_factory("canary_app:app", "--metrics-bind", f"127.0.0.1:{mport}").start()
    inode = listening_inode(mport)
    assert holds_socket(pool.pid, inode), "control: the primary holds the metrics socket"
    workers = {w["pid"] for w in pool.status()["workers"]}
    assert not [pid for pid in workers if holds_socket(pid, inode)], "a worker holds the metrics socket"

    prom = prometheus(f"127.0.0.1:{mport}")
    send(pool.port, 40)
    send(pool.port, 5, "POST")
    prom.wait_for("sum(corepool_requests_total)", 45, after=time.time())

    # Every request is in a scrape: killing a worker now loses nothing.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    pool.wait_for(lambda s: victim not in {w["pid"] for w in s["workers"]}
                  and s["workers_ready"] == s["workers_wanted"], what="the killed worker replaced")
    send(pool.port, 30)
    out = pool.ctl("reload", "--wait")
    assert out.returncode == 0, out.stderr
    send(pool.port, 25)
    done = time.time()

    prom.wait_for("sum(corepool_requests_total)", 100, after=done)
    assert prom.query('sum(corepool_requests_total{status_class="2xx"})') == 100
    assert prom.query('sum(corepool_requests_total{method="POST"})') == 5
    assert prom.query("corepool_request_duration_seconds_count") == 100
    assert prom.query('corepool_request_duration_seconds_bucket{le="+Inf"}') == 100
    assert prom.query("sum(resets(corepool_requests_total[10m]))") == 0, "a counter went down"
    assert prom.query('corepool_worker_deaths_total{cause="crash"}') == 1
    assert prom.query('corepool_worker_deaths_total{cause="reload"}') == 2
    assert prom.query('corepool_reloads_total{result="ok"}') == 1
    assert prom.query("corepool_generation") == 2
    assert prom.query("count(corepool_worker_rss_bytes)") == 2

    status, body = scrape(mport)
    assert status == 200
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check
    workers = {w["pid"] for w in pool.status()["workers"]}
    assert not [pid for pid in workers if holds_socket(pid, inode)]


_AS_SYSTEMD = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]  # out of the way of the targets first
for fd in fds:
    os.close(fd)  # systemd passes each socket once: no stray copy the pool does not know about
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="http:metrics")
os.execve(sys.executable, [sys.executable, "-m", "corepool", "serve", *sys.argv[2:]], env)
"""


def test_a_systemd_socket_named_metrics_serves_metrics_and_never_reaches_a_worker(tmp_path: Path) -> None:
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        socks.append(sock)
    http_port, metrics_port = (s.getsockname()[1] for s in socks)
    control = str(tmp_path / "c")
    log = open(tmp_path / "pool.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_SYSTEMD, ",".join(str(s.fileno()) for s in socks), "canary_app:app",
         "--app-dir", str(APPS), "--control", control, "--workers", "2"],
        pass_fds=[s.fileno() for s in socks], stdout=log, stderr=subprocess.STDOUT,
    )
    inode = os.fstat(socks[1].fileno()).st_ino
    for s in socks:
        s.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "pool.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "pool.log").read_text()
            try:
                answer = get_json(http_port)
                break
            except OSError:
                time.sleep(0.1)
        assert answer["version"] == "good"
        status, body = scrape(metrics_port)
        assert status == 200 and b"corepool_workers_wanted 2.0" in body
        assert scrape(http_port, "/metrics")[0] == 200 and b"corepool_" not in scrape(http_port, "/metrics")[1]
        out = subprocess.run([sys.executable, "-m", "corepool", "status", "--json", "--control", control],
                             capture_output=True, text=True, timeout=30)
        pool = json.loads(out.stdout)
        assert [lst["address"] for lst in pool["listeners"]] == [f"127.0.0.1:{http_port}"]
        assert pool["metrics"] == f"127.0.0.1:{metrics_port}"
        assert holds_socket(proc.pid, inode), "control: the primary holds the metrics socket"
        workers = [w["pid"] for w in pool["workers"]]
        assert len(workers) == 2 and not [pid for pid in workers if holds_socket(pid, inode)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _interruptible() -> None:
    """In the watch's process, before exec: SIGINT as at a terminal. A job started in the background by a
    non-interactive shell (as CI may be) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt
    handler: Ctrl-C (what the test sends) would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen[Any]) -> None:
    """Ctrl-C ends the watch cleanly (exit 0); it is killed if it does not, so the test never leaves it behind."""
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_watch_prints_plain_frames_when_not_a_tty(pool_factory: Any) -> None:
    pool = pool_factory("canary_app:app").start()
    send(pool.port, 20)
    proc = subprocess.Popen([sys.executable, "-m", "corepool", "status", "--watch", "--control", pool.control],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    frames: list[list[str]] = [[]]
    guard = threading.Timer(60, proc.kill)  # a watch that stops printing ends the read below, not the suite
    guard.start()
    try:
        assert proc.stdout is not None
        while len(frames) < 3:  # two complete frames (each ends with an empty line)
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            if line == "\n":
                frames.append([])
            else:
                frames[-1].append(line.rstrip("\n"))
    finally:
        guard.cancel()
        _interrupt(proc)
    for frame in frames[:2]:
        assert "generation 1, 2/2 workers ready" in frame[0] and "\x1b" not in "".join(frame)
        assert frame[1].split()[:8] == ["SLOT", "PID", "GEN", "STATE", "UPTIME", "REQ/S", "P99", "BUSY"]
        assert sorted(int(row.split()[1]) for row in frame[2:]) == sorted(pool.pids())
    assert "requests" in frames[1][0]


def test_status_watch_redraws_in_place_on_a_terminal(pool_factory: Any) -> None:
    pool = pool_factory("canary_app:app").start()
    main, sub = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "corepool", "status", "--watch", "--control", pool.control],
                            stdout=sub, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "140", "TERM": "xterm"},
                            preexec_fn=_interruptible)
    os.close(sub)
    guard = threading.Timer(60, proc.kill)
    guard.start()
    seen = b""
    try:
        # rich's Live moves the cursor up over the previous frame before drawing the next: two redraws seen.
        while seen.count(b"\x1b[1A") < 2 * 4 or seen.count(b"SLOT") < 3:
            chunk = os.read(main, 65536)
            assert chunk, proc.stderr.read() if proc.stderr else ""
            seen += chunk
    finally:
        guard.cancel()
        _interrupt(proc)
        os.close(main)
    text = seen.decode(errors="replace")
    assert "generation 1, 2/2 workers ready" in text
    assert all(str(pid) in text for pid in pool.pids())
