"""sd_notify as systemd would receive it: a datagram socket named by NOTIFY_SOCKET, read by the test."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import get_json


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def read(self, until: Any = None, timeout: float = 20) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
            except TimeoutError:
                if until is None:
                    return self.messages
                continue
            fields = dict(line.split("=", 1) for line in raw.decode().splitlines() if "=" in line)
            fields["_fds"] = str(len(fds))
            for fd in fds:
                os.close(fd)
            self.messages.append(fields)
            if until is not None and until(fields):
                return self.messages
        if until is not None:
            raise AssertionError(f"no matching notify message; got {self.messages}")
        return self.messages


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.sock.close()


def test_ready_reloading_watchdog_stopping(pool_factory: Any, notify: NotifySocket) -> None:
    pool = pool_factory("switchable:app", "--health-interval", "0.2", workers=2,
                        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    pool.start(wait=False)
    notify.read(until=lambda m: m.get("READY") == "1")
    first = notify.messages
    assert any("EXTEND_TIMEOUT_USEC" in m for m in first[:-1])
    # The socket corepool bound itself goes into systemd's fd store, so a restart finds it open.
    assert {"FDSTORE": "1", "FDNAME": "corepool.http", "_fds": "1"} in first
    ready = first[-1]
    assert ready["MAINPID"] == str(pool.pid) and ready["STATUS"].startswith("2/2 workers ready")
    # READY=1 came only once every worker was ready.
    assert pool.status()["workers_ready"] == 2
    notify.read(until=lambda m: m.get("WATCHDOG") == "1")
    # Workers never see the primary's systemd variables (NotifyAccess=main is enough).
    assert {get_json(pool.port)["notify_socket"] for _ in range(10)} == {None}
    assert pool.ctl("reload", "--wait").returncode == 0
    notify.read(until=lambda m: m.get("READY") == "1")
    reloading = [m for m in notify.messages if m.get("RELOADING") == "1"]
    assert len(reloading) == 1 and int(reloading[0]["MONOTONIC_USEC"]) > 0
    pool.signal(signal.SIGTERM)
    notify.read(until=lambda m: m.get("STOPPING") == "1")
    assert pool.wait_exit() == 0


def test_watchdog_starves_when_every_worker_is_wedged(pool_factory: Any, notify: NotifySocket) -> None:
    pool = pool_factory("corepool.demo:app", "--health-interval", "0.2", "--health-timeout", "30", workers=2,
                        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    pool.start(wait=False)
    notify.read(until=lambda m: m.get("READY") == "1")
    notify.read(until=lambda m: m.get("WATCHDOG") == "1")
    wedged = pool.pids()
    for pid in wedged:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)  # the last pongs age past the watchdog window
        notify.read(timeout=0.3)  # what was sent before that
        notify.messages.clear()
        notify.read(timeout=2)
        assert not any(m.get("WATCHDOG") == "1" for m in notify.messages), notify.messages
        assert "not feeding the watchdog" in pool.log()
    finally:
        for pid in wedged:  # so that they can drain and exit with the pool: no stopped process left behind
            os.kill(pid, signal.SIGCONT)


def test_a_notify_socket_that_went_away_does_not_kill_the_primary(pool_factory: Any, notify: NotifySocket) -> None:
    """sd_notify errors are logged and survived: the stop still drains every worker and exits 0."""
    pool = pool_factory("corepool.demo:app", workers=2, env={"NOTIFY_SOCKET": notify.path})
    pool.start(wait=False)
    notify.read(until=lambda m: m.get("READY") == "1")
    workers = pool.pids()
    notify.sock.close()
    os.unlink(notify.path)
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit(timeout=20) == 0, pool.log()
    assert "sd_notify" in pool.log() and "Traceback" not in pool.log()
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived its primary"
