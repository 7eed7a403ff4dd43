"""Logging for the primary and workers: structured journald entries under systemd, plain lines otherwise.

Every pool event is logged with fields ``EVENT`` (spawn, ready, exit, kill, backoff, reload, scale, stop, ...),
and where they apply ``WORKER_PID``, ``GENERATION`` and ``SLOT``; under journald they become journal fields
(``journalctl -u corepool@NAME EVENT=reload``), on a terminal they are left out of the line. The journal is
written with corepool's own implementation of journald's native protocol (:mod:`corepool.journal`), so a plain
``pip install corepool`` has the fields too, and logging never blocks.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from corepool.journal import JournalHandler
from corepool.systemd import journal_stream_is_stderr

logger = logging.getLogger("corepool")


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        role = getattr(record, "ROLE", "primary")
        return f"corepool[{os.getpid()}] {role} {record.levelname.lower()}: {record.getMessage()}"


def setup(level: str = "info", role: str = "primary") -> None:
    """Send the ``corepool`` logger to journald when stderr is the journal, else to stderr as plain lines."""
    handler: logging.Handler
    if journal_stream_is_stderr():
        handler = JournalHandler("corepool", {"ROLE": role}, plain=_PlainFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()  # a forked worker's copy of the primary's journal socket
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
    # stacklevel 2: CODE_FILE/CODE_LINE/CODE_FUNC name the caller, not this function
    logger.log(logging.WARNING if warning else logging.INFO, message, extra=extra, stacklevel=2)
