"""Logging for the primary and workers: structured journald entries under systemd, plain lines otherwise.

Every pool event is logged with fields ``EVENT`` (spawn, ready, exit, kill, backoff, reload, scale, stop, ...),
and where they apply ``WORKER_PID``, ``GENERATION`` and ``SLOT``; under journald they become journal fields
(``journalctl -u corepool@NAME EVENT=reload``), on a terminal they are left out of the line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from corepool.systemd import journal_stream_is_stderr

logger = logging.getLogger("corepool")


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        role = getattr(record, "ROLE", "primary")
        return f"corepool[{os.getpid()}] {role} {record.levelname.lower()}: {record.getMessage()}"


def setup(level: str = "info", role: str = "primary") -> None:
    """Send the ``corepool`` logger to journald when stderr is the journal, else to stderr as plain lines."""
    handler: logging.Handler | None = None
    if journal_stream_is_stderr():
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="corepool", ROLE=role)
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    _role[0] = role


_role = ["primary"]
_bound: dict[str, Any] = {}


def bind(**fields: Any) -> None:
    """Fields added to every later event of this process (a worker: WORKER_PID, GENERATION, SLOT)."""
    _bound.update({k.upper(): v for k, v in fields.items() if v is not None})


def event(event: str, message: str, *, warning: bool = False, **fields: Any) -> None:
    """Log one pool event with its structured fields (upper-case names, journald style)."""
    extra: dict[str, Any] = {"EVENT": event, "ROLE": _role[0], **_bound}
    extra.update({k.upper(): v for k, v in fields.items() if v is not None})
    logger.log(logging.WARNING if warning else logging.INFO, message, extra=extra)
