"""First-request marks: when ``$BENCH_MARK_DIR`` is set, the first request a process serves writes
``<dir>/<pid>`` holding ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across processes on Linux).

The bench uses them to learn, without knowing any server's internals, when a new worker started serving
(crash replacement, rolling reload). The cost on the request path is one ``os.getpid()`` comparison.
"""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("BENCH_MARK_DIR", "")
_marked_pid = 0


def mark() -> None:
    """Record this process's first served request (once per pid; a forked child marks again)."""
    global _marked_pid
    pid = os.getpid()
    if pid == _marked_pid:
        return
    _marked_pid = pid
    if _DIR:
        now = time.monotonic()
        tmp = os.path.join(_DIR, f".{pid}")
        with open(tmp, "w") as fh:
            fh.write(repr(now))
        os.replace(tmp, os.path.join(_DIR, str(pid)))
