"""Floods of bad requests: a bounded log, answers that reach the client, and a pool that keeps serving."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time

from tests.hostile.conftest import HostilePool, send_raw

BAD = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"


def _refusals(log: str) -> tuple[int, int]:
    """(lines about refused requests, requests they account for) in a pool's log."""
    lines = [line for line in log.splitlines() if "refused" in line and "request" in line]
    counted = 0
    for line in lines:
        more = re.search(r"refused (\d+) more request", line)
        counted += int(more.group(1)) if more else 1
    return len(lines), counted


def test_a_flood_of_bad_requests_is_answered_and_logged_in_a_few_lines(hostile: HostilePool) -> None:
    lines_before, counted_before = _refusals(hostile.pool.log())
    start = time.monotonic()
    for _ in range(200):
        (answer,) = send_raw(hostile.port, BAD)
        assert answer.status == 400
    elapsed = time.monotonic() - start
    time.sleep(1.2)  # the last interval's count is said when it ends (one second after its first line)
    log = hostile.pool.log()
    lines, counted = _refusals(log)
    assert counted - counted_before == 200, log[-2000:]  # every refusal accounted for, none lost
    assert lines - lines_before <= 2 * (elapsed + 2), (lines - lines_before, elapsed)  # two lines a second at most
    assert "Traceback" not in log
    (ok,) = send_raw(hostile.port, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ok.status == 200 and ok.seen is not None


def test_a_huge_head_gets_its_431_and_not_a_reset(hostile: HostilePool) -> None:
    """The server stops reading at the limit while the client is still sending: closing then would make the
    kernel reset the connection, and the client would lose the answer. The lingering close keeps it."""
    for _ in range(5):
        received = _send_huge_head(hostile.port)
        assert received.startswith(b"HTTP/1.1 431 "), received[:200]
        assert b"<reset>" not in received


def _send_huge_head(port: int) -> bytes:
    """Send a 16 MiB head while reading in a thread; what was read (``<reset>`` where the connection reset)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def read() -> None:
            try:
                while chunk := sock.recv(65536):
                    received.extend(chunk)
            except OSError:
                received.extend(b"<reset>")

        reader = threading.Thread(target=read)
        reader.start()
        with contextlib.suppress(OSError):  # reset while sending: what the reader got tells the answer's fate
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Huge: " + b"a" * (16 * 1024 * 1024) + b"\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
        reader.join(15)
    return bytes(received)
