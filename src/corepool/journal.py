"""journald's native protocol in pure Python: structured entries with no libsystemd and no compiler.

What systemd's docs/JOURNAL_NATIVE_PROTOCOL.md describes and ``sd_journal_sendv()`` does: one entry per datagram
on journald's ``AF_UNIX``/``SOCK_DGRAM`` socket, ``KEY=value\\n`` per field, and for a value with a newline the
key, ``\\n``, its length as a little-endian 64-bit integer, the value and ``\\n``. An entry too large for a
datagram (``EMSGSIZE``; a 100 KB traceback) goes as a sealed memfd passed with ``SCM_RIGHTS`` in an empty
datagram.

Unlike libsystemd, nothing here ever waits: the socket is non-blocking, so a journald that is stopped, restarting
or slower than the pool (its queue full: ``EAGAIN``) costs the caller one failed ``sendmsg()``, never a stall of
the primary's loop or a worker's. :class:`JournalHandler` then writes the line to stderr, without waiting either
(under systemd stderr is journald's stream socket: the line still reaches the journal, as plain text with its
priority), and goes back to the native protocol with the next record: the socket is not connected, each entry is
addressed to the path, so a journald that restarted on a new socket is found again at once.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
from collections.abc import Iterable, Mapping

SOCKET_PATH = "/run/systemd/journal/socket"
# Room in the socket's send buffer for bursts (libsystemd asks for 8 MiB; the kernel caps it at wmem_max).
SEND_BUFFER = 8 * 2**20
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_LENGTH = struct.Struct("<Q")
# A field name journald accepts from a client: upper-case letters, digits and underscores, not starting with "_".
FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")

# syslog(3) priorities by logging level
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level gets the next standard one's)."""
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR):
        if levelno <= level:
            return PRIORITY[level]
    return PRIORITY[logging.CRITICAL]


def encode(fields: Iterable[tuple[str, object]]) -> bytes:
    """One entry in the native protocol's format: ``KEY=value\\n``, or the binary form for values with ``\\n``."""
    out = bytearray()
    for key, value in fields:
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "backslashreplace")
        name = key.encode("ascii")
        if b"\n" in data:
            out += name + b"\n" + _LENGTH.pack(len(data)) + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


class Journal:
    """A non-blocking sender of entries to journald's socket. :meth:`send` raises ``OSError`` when it cannot."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or SOCKET_PATH
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    def send(self, entry: bytes) -> None:
        """Send one encoded entry: as a datagram, or as a sealed memfd when it is too large for one."""
        try:
            self.sock.sendto(entry, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(entry)

    def _send_memfd(self, entry: bytes) -> None:
        fd = os.memfd_create("corepool-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)  # journald refuses a memfd the sender could still change
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()


class StderrStream:
    """Lines to stderr that never wait: under systemd stderr is journald's stream socket, sent to with
    ``MSG_DONTWAIT`` (a full buffer drops the line and counts it); anything else gets a plain write."""

    def __init__(self, fd: int = 2) -> None:
        self.dropped = 0
        self._sock: socket.socket | None = None
        try:
            self._sock = socket.socket(fileno=os.dup(fd))
        except OSError:  # not a socket: a file or a pipe
            self._fd = fd

    def write(self, line: bytes) -> None:
        try:
            if self._sock is None:
                os.write(self._fd, line)
                return
            sent = self._sock.send(line, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            if sent < len(line):  # the buffer filled mid-line: end the line, so the next one starts afresh
                self._sock.send(b"\n", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError:
            self.dropped += 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


class JournalHandler(logging.Handler):
    """A logging handler writing structured journal entries, stderr lines while journald cannot take them.

    Every entry has ``MESSAGE``, ``PRIORITY``, ``SYSLOG_IDENTIFIER``, ``LOGGER``, ``CODE_FILE``/``CODE_LINE``/
    ``CODE_FUNC``, ``THREAD_NAME`` (and ``EXCEPTION_TEXT`` with a traceback), the handler's ``defaults``
    (``ROLE``, ...) and every upper-case attribute of the record (the ``extra=`` fields: ``EVENT``,
    ``WORKER_PID``, ``GENERATION``, ...), which win over the defaults.
    """

    def __init__(self, identifier: str, defaults: Mapping[str, object] | None = None, *,
                 plain: logging.Formatter | None = None, journal: Journal | None = None,
                 stderr: StderrStream | None = None) -> None:
        super().__init__()
        self.identifier = identifier
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self.plain = plain or logging.Formatter()  # the stderr lines' format
        self.journal = journal or Journal()
        self.stderr = stderr or StderrStream()
        self.outage: str | None = None  # why journald could not be reached, while it cannot
        self.to_stderr = 0  # records written to stderr during the current outage

    def entry(self, record: logging.LogRecord) -> bytes:
        fields: dict[str, object] = {
            "MESSAGE": self.format(record),
            "PRIORITY": priority(record.levelno),
            "SYSLOG_IDENTIFIER": self.identifier,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName,
            "THREAD_NAME": record.threadName,
            **self.defaults,
        }
        if record.exc_text:  # set by format() above when the record has exc_info
            fields["EXCEPTION_TEXT"] = record.exc_text
        for key, value in record.__dict__.items():
            if value is not None and key.isupper() and FIELD_NAME.fullmatch(key):
                fields[key] = value
        return encode(fields.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = self.entry(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self.journal.send(entry)
        except OSError as exc:
            self._fall_back(record, exc)
            return
        if self.outage is not None:
            self._back()

    def _fall_back(self, record: logging.LogRecord, exc: OSError) -> None:
        if self.outage is None:
            self.outage = errno.errorcode.get(exc.errno or 0, str(exc))
            self._to_stderr(self._note(f"journald cannot take entries ({self.outage}): logging plain lines to "
                                       "stderr until it can"))
        self.to_stderr += 1
        self._to_stderr(record)

    def _to_stderr(self, record: logging.LogRecord) -> None:
        try:
            text = self.plain.format(record)
        except Exception:
            self.handleError(record)
            return
        # "<N>" is journald's stream prefix for the priority (SyslogLevelPrefix=, on by default).
        self.stderr.write(f"<{priority(record.levelno)}>{text}\n".encode(errors="backslashreplace"))

    def _note(self, message: str) -> logging.LogRecord:
        return logging.makeLogRecord({"name": "corepool", "msg": message, "levelno": logging.WARNING,
                                      "levelname": "WARNING", "EVENT": "journal", **self.defaults})

    def _back(self) -> None:
        note = self._note(f"journald takes entries again: {self.to_stderr} went to stderr as plain lines "
                          f"meanwhile ({self.outage}), {self.stderr.dropped} of them dropped (stderr was full)")
        self.outage, self.to_stderr, self.stderr.dropped = None, 0, 0
        with contextlib.suppress(OSError):
            self.journal.send(self.entry(note))

    def close(self) -> None:
        self.journal.close()
        self.stderr.close()
        super().close()
