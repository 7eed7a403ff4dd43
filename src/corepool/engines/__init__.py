"""HTTP and raw engines. ``serve`` runs until the worker is told to stop and returns an exit code."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corepool.worker import WorkerLink, WorkerSpec


@dataclass
class Route:
    """One app and the listening sockets it serves."""

    spec: str  # module:attribute
    app: Any
    interface: str  # asgi, wsgi or raw
    sockets: list[socket.socket]


def serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve every route in this worker: HTTP routes on uvicorn (ASGI, or WSGI through a2wsgi), or one raw handler."""
    if any(route.interface == "raw" for route in routes):
        from corepool.engines import raw

        (route,) = routes  # settings refuse routes next to a raw handler
        return raw.serve(route.app, route.sockets, link, spec)
    from corepool.engines import asgi

    return asgi.serve(routes, link, spec)
