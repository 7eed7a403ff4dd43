"""What a worker serves: each app with the listening sockets routed to it (by socket name)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Route:
    """One app and the listening sockets it serves."""

    spec: str  # module:attribute
    app: Any
    interface: str  # asgi, wsgi or raw
    sockets: list[socket.socket]
