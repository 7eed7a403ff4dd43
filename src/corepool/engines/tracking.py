"""The WebSocket side of a worker's :class:`~corepool.engines.stats.RequestStats`, and uvicorn's duplicate log line
for an app's exception silenced (corepool logs it once, with its traceback)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from corepool.engines.stats import RequestStats, log_app_error

# uvicorn logs an app's exception too, as one line without the traceback; the tracker's line replaces it.
_UVICORN_APP_ERRORS = ("Exception in ASGI application", "Exception in ASGI application\n")


class _DropUvicornAppErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _UVICORN_APP_ERRORS


def silence_uvicorn_app_errors() -> None:
    """Keep uvicorn from logging an app exception a second time (the tracker logged it with its traceback)."""
    logging.getLogger("uvicorn.error").addFilter(_DropUvicornAppErrors())


class WebSocketTracker:
    """ASGI middleware for the WebSocket path (uvicorn's protocols call it): open WebSockets counted in ``stats``
    (as connections, not requests: they are meant to stay open), an unhandled exception logged once with its
    traceback. HTTP/1.1 requests are counted and clocked by the protocol itself (engines/http11.py)."""

    def __init__(self, app: Any, stats: RequestStats) -> None:
        self.app, self.stats = app, stats

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") != "websocket":
            await self.app(scope, receive, send)
            return
        self.stats.websockets += 1
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            log_app_error(f"WEBSOCKET {scope.get('path', '')}", exc, scope.get("path", ""), None)
            raise
        finally:
            self.stats.websockets -= 1
