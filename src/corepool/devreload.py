"""``--reload`` for development: roll the pool when a ``.py`` file under ``app_dir`` changes.

A thread in the primary watches ``app_dir`` with watchfiles (inotify, debounced; caches, ``.git`` and virtualenvs
ignored) and sends the primary SIGUSR2, the same rolling, readiness-gated reload as ``corepool reload``: code that
fails to import is rolled back and the old workers keep serving. The primary never imports the app, so it needs
no restart of its own.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from corepool import log


class DevReloadUnavailable(RuntimeError):
    """``reload`` was asked for but watchfiles is not installed."""


class Watcher:
    """The running watch; ``stop()`` ends it (within watchfiles' poll step)."""

    def __init__(self, thread: threading.Thread, stop_event: threading.Event) -> None:
        self.thread, self.stop_event = thread, stop_event

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)


def start(settings: Any) -> Watcher:
    """Watch ``settings.app_dir`` for ``*.py`` changes; on each (debounced) batch, SIGUSR2 to this process."""
    try:
        import watchfiles
    except ImportError as exc:
        raise DevReloadUnavailable(
            "reload: needs the watchfiles package (pip install 'corepool[reload]' or pip install watchfiles)"
        ) from exc
    root = Path(settings.app_dir or ".").resolve()
    stop_event = threading.Event()
    target = os.getpid()

    def watch() -> None:
        for changes in watchfiles.watch(root, watch_filter=watchfiles.PythonFilter(), stop_event=stop_event,
                                        raise_interrupt=False):
            names = sorted(os.path.relpath(path, root) for _, path in changes)
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            log.event("reload", f"reload: {shown} changed under {root}: rolling the pool")
            os.kill(target, signal.SIGUSR2)

    thread = threading.Thread(target=watch, name="corepool-devreload", daemon=True)
    thread.start()
    log.event("reload", f"reload: watching *.py under {root} (development only)")
    return Watcher(thread, stop_event)
