"""The worker-side API for apps: broadcast to every other worker, and subscribe to topics.

    import corepool

    @corepool.on_message("cache.invalidate")
    def drop(data):            # called on the worker's event loop; may also be ``async def``
        cache.pop(data["key"], None)

    corepool.broadcast("cache.invalidate", {"key": "user:42"})

Payloads are JSON; one larger than ``max_message_bytes`` (64 KiB by default) is logged and dropped.
Outside a corepool worker (a unit test of the app, say) ``broadcast`` does nothing and returns False.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

Handler = Callable[[Any], Awaitable[None] | None]
_handlers: dict[str, list[Handler]] = {}
_log = logging.getLogger("corepool")


class _Sender(Protocol):
    max_message_bytes: int

    def send(self, kind: str, **fields: Any) -> bool: ...


_link: list[_Sender] = []


def on_message(topic: str) -> Callable[[Handler], Handler]:
    """Decorator: call the function with ``data`` whenever another worker broadcasts on ``topic``."""

    def register(handler: Handler) -> Handler:
        _handlers.setdefault(topic, []).append(handler)
        return handler

    return register


def broadcast(topic: str, data: Any = None) -> bool:
    """Send ``data`` (JSON-serialisable) to every other worker; True when handed to the primary."""
    if not _link:
        return False
    link = _link[0]
    try:
        size = len(json.dumps(data, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        _log.warning("broadcast %r dropped: data is not JSON-serialisable (%s)", topic, exc)
        return False
    if size > link.max_message_bytes:
        _log.warning(
            "broadcast %r dropped: %d bytes is over max_message_bytes (%d)", topic, size, link.max_message_bytes
        )
        return False
    return link.send("broadcast", topic=topic, data=data)


def handlers_for(topic: str) -> list[Handler]:
    return list(_handlers.get(topic, ()))


def attach(link: _Sender) -> None:
    """Called by the worker once its channel is up."""
    _link[:] = [link]
