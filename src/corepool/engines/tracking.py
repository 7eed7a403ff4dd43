"""The ASGI middleware around every HTTP route that feeds the worker's :class:`~corepool.engines.stats.RequestStats`:
each request's clock and count, its status, and an unhandled app exception logged once with its traceback.

An ASGI app's waits for its request body pause its clock (the client's time, not the app's); the WSGI bridge
pauses and resumes the clock itself (:data:`current_clock`), since its app waits on a thread, not on the loop.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

from corepool.engines.stats import AppClock, RequestStats, log_app_error

# uvicorn logs an app's exception too, as one line without the traceback; the tracker's line replaces it.
_UVICORN_APP_ERRORS = ("Exception in ASGI application", "Exception in ASGI application\n")


class _DropUvicornAppErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _UVICORN_APP_ERRORS


def silence_uvicorn_app_errors() -> None:
    """Keep uvicorn from logging an app exception a second time (the tracker logged it with its traceback)."""
    logging.getLogger("uvicorn.error").addFilter(_DropUvicornAppErrors())


# The clock of the request the current task serves: the WSGI bridge starts it when an app thread takes the request.
current_clock: contextvars.ContextVar[AppClock | None] = contextvars.ContextVar("corepool_app_clock", default=None)


class RequestTracker:
    """ASGI middleware: each request's clock and count in ``stats``; unhandled exceptions logged once."""

    def __init__(self, app: Any, stats: RequestStats, body_waits: bool = True) -> None:
        """``body_waits``: an ASGI app's waits for the request body stop its clock here; the WSGI bridge (False)
        knows better when its app waits (its thread, not the loop) and stops the clock itself."""
        self.app, self.stats, self.body_waits = app, stats, body_waits

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            self.stats.websockets += 1
            try:
                await self._run(scope, receive, send, f"WEBSOCKET {scope.get('path', '')}")
            finally:
                self.stats.websockets -= 1
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        clock = self.stats.begin(scope.get("method", "?"), scope.get("path", ""))
        current_clock.set(clock)
        status: list[int | None] = [None]  # once started; None: the app never answered (the server sent 500)
        body_pending = [self.body_waits]

        def send_and_note_status(message: Any) -> Any:
            # A plain function returning send's awaitable: no extra coroutine per message.
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            return send(message)

        async def receive_on_the_clients_time() -> Any:
            if not body_pending[0]:  # the body is in: a wait now is for a disconnect, on the app's time
                return await receive()
            clock.pause()
            try:
                message = await receive()
            finally:
                clock.resume()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_pending[0] = False
            return message

        try:
            await self._run(scope, receive_on_the_clients_time, send_and_note_status, clock.label)
        finally:
            self.stats.end(clock, status[0])

    async def _run(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any],
                   label: str) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            log_app_error(label, exc, scope.get("path", ""), scope.get("method"))
            raise
