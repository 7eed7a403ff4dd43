"""The sdnotify fallback (no libsystemd): a notification that cannot be sent is reported once, never dropped
silently and never fatal."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from corepool import systemd

pytestmark = pytest.mark.usefixtures("corepool_records")  # tests/unit/conftest.py


@pytest.fixture
def sdnotify_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sdnotify")
    monkeypatch.setattr(systemd, "_libsystemd_sender", lambda: None)


def notifier(monkeypatch: pytest.MonkeyPatch, path: str) -> systemd.Notifier:
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # sdnotify reads the process's environment, as libsystemd does
    return systemd.Notifier()


def receiver_at(path: str) -> socket.socket:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(10)  # a notification that never comes fails the test instead of hanging it
    return receiver


def test_sdnotify_sends_and_then_reports_a_vanished_socket(
        sdnotify_only: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "notify")
    receiver = receiver_at(path)
    pool_notifier = notifier(monkeypatch, path)
    assert pool_notifier.backend == "sdnotify"
    pool_notifier.ready("serving")
    assert receiver.recv(4096).startswith(b"READY=1\nSTATUS=serving")
    receiver.close()
    with caplog.at_level(logging.WARNING, logger="corepool"):
        pool_notifier.send("STATUS=still here")
        pool_notifier.send("STATUS=and here")
    failures = [r.getMessage() for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1 and path in failures[0], failures


def test_sdnotify_reports_a_socket_that_was_never_there(
        sdnotify_only: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool_notifier = notifier(monkeypatch, str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, logger="corepool"):
        pool_notifier.ready("serving")
    assert any("sd_notify" in r.getMessage() and "absent" in r.getMessage() for r in caplog.records)


def test_sdnotify_passes_file_descriptors(sdnotify_only: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    receiver = receiver_at(path)
    pool_notifier = notifier(monkeypatch, path)
    r, w = socket.socketpair()
    try:
        pool_notifier.store_fds([("http", r.fileno())], set())
        message, fds, _flags, _addr = socket.recv_fds(receiver, 4096, 4)
        assert message == b"FDSTORE=1\nFDNAME=http" and len(fds) == 1
        for fd in fds:
            socket.close(fd)
    finally:
        r.close()
        w.close()
        receiver.close()
