"""HTTP and raw engines. Each ``serve`` runs until the worker is told to stop and returns an exit code."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corepool.worker import WorkerLink, WorkerSpec


def serve(interface: str, app: Any, listeners: list[socket.socket], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve ``app`` on ``listeners`` with the engine for ``interface`` (asgi, wsgi or raw)."""
    if interface == "asgi":
        from corepool.engines import asgi

        return asgi.serve(app, listeners, link, spec)
    if interface == "wsgi":
        from corepool.engines import wsgi

        return wsgi.serve(app, listeners, link, spec)
    from corepool.engines import raw

    return raw.serve(app, listeners, link, spec)
