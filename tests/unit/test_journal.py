"""corepool.journal: journald's native protocol against a socket standing in for journald (no systemd needed).

The real journald is in tests/systemd/test_journal.py; here: the wire format byte for byte, the memfd path for
an entry too large for a datagram, and what happens while nobody takes the entries (no socket, a full queue):
the line goes to "stderr" (a socketpair here, as journald's stream socket is under systemd), nothing waits, and
the journal is used again once it is back.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from corepool import journal, log


def parse(data: bytes) -> list[tuple[str, bytes]]:
    """The native protocol's entry format, decoded (as journald does)."""
    fields: list[tuple[str, bytes]] = []
    while data:
        line_end = data.index(b"\n")
        eq = data.find(b"=", 0, line_end)
        if eq >= 0:
            fields.append((data[:eq].decode(), data[eq + 1 : line_end]))
            data = data[line_end + 1 :]
        else:
            key = data[:line_end].decode()
            (size,) = struct.unpack("<Q", data[line_end + 1 : line_end + 9])
            value = data[line_end + 9 : line_end + 9 + size]
            assert data[line_end + 9 + size : line_end + 10 + size] == b"\n"
            fields.append((key, value))
            data = data[line_end + 10 + size :]
    return fields


class FakeJournald:
    """An AF_UNIX datagram socket at a path, read like journald reads /run/systemd/journal/socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.memfds = 0  # entries that came as a memfd

    def entries(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(16 << 20, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return out
            for level, kind, payload in anc:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS) and data == b""
                fd = array.array("i", payload[:4])[0]
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL, "journald wants a sealed memfd"
                data = os.pread(fd, os.fstat(fd).st_size, 0)  # journald maps it: the offset does not matter
                os.close(fd)
                self.memfds += 1
            out.append({k: v.decode() for k, v in parse(data)})

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def journald(tmp_path: Path) -> Iterator[FakeJournald]:
    j = FakeJournald(tmp_path / "journal.sock")
    yield j
    j.close()


@pytest.fixture
def stderr_pair() -> Iterator[tuple[journal.StderrStream, socket.socket]]:
    """A StderrStream on one end of a stream socketpair (journald's stdout stream, as under systemd)."""
    ours, reader = socket.socketpair()
    stream = journal.StderrStream(ours.fileno())
    ours.close()  # StderrStream keeps a dup
    reader.setblocking(False)
    yield stream, reader
    stream.close()
    reader.close()


def read_all(sock: socket.socket) -> str:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def make_logger(handler: logging.Handler) -> logging.Logger:
    lg = logging.getLogger(f"corepool.test.{id(handler)}")
    lg.handlers[:] = [handler]
    lg.propagate = False
    lg.setLevel(logging.DEBUG)
    return lg


def test_encode_uses_the_binary_form_only_for_values_with_a_newline() -> None:
    data = journal.encode([("MESSAGE", "hello"), ("TRACE", "a\nb"), ("N", 3), ("RAW", b"x=\ny")])
    assert data == (b"MESSAGE=hello\n" + b"TRACE\n" + struct.pack("<Q", 3) + b"a\nb\n" + b"N=3\n"
                    + b"RAW\n" + struct.pack("<Q", 4) + b"x=\ny\n")
    assert parse(data) == [("MESSAGE", b"hello"), ("TRACE", b"a\nb"), ("N", b"3"), ("RAW", b"x=\ny")]


def test_priority_follows_syslog() -> None:
    assert [journal.priority(lv) for lv in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                            logging.CRITICAL, 25)] == [7, 6, 4, 3, 2, 4]


def test_entry_carries_the_fields_corepool_logs(journald: FakeJournald,
                                                 stderr_pair: tuple[journal.StderrStream, socket.socket]) -> None:
    handler = journal.JournalHandler("corepool", {"ROLE": "worker"}, journal=journal.Journal(str(journald.path)),
                                     stderr=stderr_pair[0])
    lg = make_logger(handler)
    lg.warning("worker 42 exited", extra={"EVENT": "exit", "WORKER_PID": 42, "GENERATION": 3, "SLOT": 1,
                                         "CAUSE": "crash", "SIGNAL": "SIGKILL", "lower": "not a field",
                                         "_TRUSTED": "never sent", "NONE": None})
    (entry,) = journald.entries()
    assert entry["MESSAGE"] == "worker 42 exited"
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "corepool" and entry["ROLE"] == "worker"
    assert (entry["EVENT"], entry["WORKER_PID"], entry["GENERATION"], entry["SLOT"], entry["CAUSE"],
            entry["SIGNAL"]) == ("exit", "42", "3", "1", "crash", "SIGKILL")
    assert entry["CODE_FUNC"] == "test_entry_carries_the_fields_corepool_logs" and entry["CODE_FILE"] == __file__
    assert not {"lower", "LOWER", "_TRUSTED", "NONE"} & set(entry)
    assert read_all(stderr_pair[1]) == ""


def test_event_fields_and_caller_through_log_event(journald: FakeJournald, monkeypatch: pytest.MonkeyPatch) -> None:
    """log.setup() picks the native handler when stderr is the journal; log.event's fields reach it."""
    monkeypatch.setattr(log, "journal_stream_is_stderr", lambda: True)
    monkeypatch.setattr(journal, "SOCKET_PATH", str(journald.path))
    try:
        log.setup("info", role="primary")
        log.bind(worker_pid=7, generation=2)
        log.event("reload", "reloading to generation 2", slot=0)
    finally:
        log._bound.clear()
        log.setup("info")
        monkeypatch.undo()
        log.setup("info")  # back to plain stderr for the other tests
    (entry,) = journald.entries()
    assert (entry["EVENT"], entry["WORKER_PID"], entry["GENERATION"], entry["SLOT"], entry["ROLE"]) == (
        "reload", "7", "2", "0", "primary")
    assert entry["CODE_FUNC"] == "test_event_fields_and_caller_through_log_event"


def test_an_entry_too_large_for_a_datagram_goes_whole_as_a_sealed_memfd(journald: FakeJournald) -> None:
    sender = journal.Journal(str(journald.path))
    # The largest datagram is about the send buffer (SO_SNDBUF, capped by net.core.wmem_max): make it small.
    sender.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    big = "Traceback (most recent call last):\n" + "".join(f"  line {i} {'x' * 90}\n" for i in range(3_000))
    sender.send(journal.encode([("MESSAGE", big), ("EVENT", "boot_error")]))
    sender.send(journal.encode([("MESSAGE", "small")]))
    sender.close()
    big_entry, small_entry = journald.entries()
    assert big_entry["MESSAGE"] == big and big_entry["EVENT"] == "boot_error"
    assert small_entry["MESSAGE"] == "small"
    assert journald.memfds == 1  # the 300 KB one; the small one as a plain datagram


def test_no_journald_goes_to_stderr_then_back(tmp_path: Path,
                                              stderr_pair: tuple[journal.StderrStream, socket.socket]) -> None:
    stream, reader = stderr_pair
    path = tmp_path / "journal.sock"
    handler = journal.JournalHandler("corepool", {"ROLE": "primary"}, plain=log._PlainFormatter(),
                                     journal=journal.Journal(str(path)), stderr=stream)
    lg = make_logger(handler)
    lg.info("while journald is away", extra={"EVENT": "spawn"})
    lg.error("and another")
    text = read_all(reader)
    pid = os.getpid()
    assert text == (f"<4>corepool[{pid}] primary warning: journald cannot take entries (ENOENT): logging plain "
                    f"lines to stderr until it can\n"
                    f"<6>corepool[{pid}] primary info: while journald is away\n"
                    f"<3>corepool[{pid}] primary error: and another\n")
    back = FakeJournald(path)  # journald starts (again)
    try:
        lg.info("journald is back", extra={"EVENT": "ready"})
        first, note = back.entries()
    finally:
        back.close()
    assert first["MESSAGE"] == "journald is back" and first["EVENT"] == "ready"
    assert note["EVENT"] == "journal" and note["PRIORITY"] == "4"
    assert "2 went to stderr" in note["MESSAGE"] and "(ENOENT)" in note["MESSAGE"]
    assert read_all(reader) == ""


def test_full_journald_queue_and_full_stderr_never_block(journald: FakeJournald) -> None:
    """journald stopped (nobody reads its socket) and its stream full too: every call returns, lines are counted."""
    ours, reader = socket.socketpair()  # nobody reads this "stderr" either
    stream = journal.StderrStream(ours.fileno())
    ours.close()
    handler = journal.JournalHandler("corepool", {"ROLE": "primary"}, journal=journal.Journal(str(journald.path)),
                                     stderr=stream)
    lg = make_logger(handler)
    try:
        for i in range(5000):  # a blocking send would hang here long before the end
            lg.info("line %d %s", i, "y" * 400, extra={"EVENT": "access"})
        assert handler.outage == "EAGAIN"
        assert stream.dropped > 0  # the stream's buffer filled too: dropped and counted, never waited for
        dropped = stream.dropped
        taken = len(journald.entries())  # journald catches up
        lg.info("caught up", extra={"EVENT": "ready"})
        entries = journald.entries()
        assert taken > 0 and entries[0]["MESSAGE"] == "caught up"
        assert f"{5000 - taken} went to stderr" in entries[1]["MESSAGE"]
        assert f"{dropped} of them dropped" in entries[1]["MESSAGE"]
    finally:
        handler.close()
        reader.close()
