"""What a worker knows about its own requests: an ASGI middleware around every HTTP route.

It counts finished requests (by method and status class, with a duration histogram: :mod:`corepool.traffic`),
remembers how long each in-flight request has kept the *app* busy (so the primary can retire a worker whose
request outlives ``request_timeout``, naming that request), and logs every unhandled app exception once, with
its type and traceback, from the worker that saw it. Counting is a few dict and list updates in the worker's memory: no
syscall on the request path; the counts travel to the primary with the next pong. WebSocket sessions are
counted as connections, not as requests: they are meant to stay open.

``request_timeout`` is about the app, not the client: a request's :class:`AppClock` stops while the app waits
for a request body the client has not sent yet (the client's time is ``body_timeout``'s), and a WSGI request's
clock starts only when an app thread takes it (the bridge gathers the body on the loop, and may wait for a free
thread). So one slow upload costs a connection, never a worker.
"""

from __future__ import annotations

import bisect
import contextvars
import itertools
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from corepool import log, traffic

# uvicorn logs an app's exception too, as one line without the traceback; the tracker's line replaces it.
_UVICORN_APP_ERRORS = ("Exception in ASGI application", "Exception in ASGI application\n")


class _DropUvicornAppErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _UVICORN_APP_ERRORS


def silence_uvicorn_app_errors() -> None:
    """Keep uvicorn from logging an app exception a second time (the tracker logged it with its traceback)."""
    logging.getLogger("uvicorn.error").addFilter(_DropUvicornAppErrors())


class AppClock:
    """How long one request has kept the app busy: wall time since it started, less the time it was paused
    (waiting for the client's body, or for a WSGI thread)."""

    __slots__ = ("label", "paused_at", "paused_for", "start")

    def __init__(self, start: float, label: str) -> None:
        self.start, self.label = start, label
        self.paused_for = 0.0
        self.paused_at: float | None = None

    def pause(self) -> None:
        if self.paused_at is None:
            self.paused_at = time.monotonic()

    def resume(self) -> None:
        paused_at = self.paused_at
        if paused_at is not None:
            self.paused_for += time.monotonic() - paused_at
            self.paused_at = None

    def age(self, now: float) -> float:
        paused_at = self.paused_at
        return now - self.start - self.paused_for - (0.0 if paused_at is None else now - paused_at)


# The clock of the request the current task serves: the WSGI bridge starts it when an app thread takes the request.
current_clock: contextvars.ContextVar[AppClock | None] = contextvars.ContextVar("corepool_app_clock", default=None)


class RequestTracker:
    """ASGI middleware: request counts, in-flight start times, and unhandled exceptions logged once."""

    def __init__(self, app: Any, body_waits: bool = True) -> None:
        """``body_waits``: an ASGI app's waits for the request body stop its clock here; the WSGI bridge (False)
        knows better when its app waits (its thread, not the loop) and stops the clock itself."""
        self.app = app
        self.body_waits = body_waits
        self.total = 0
        self.websockets = 0
        self.inflight: dict[int, AppClock] = {}  # key -> the request's clock, labelled "METHOD /path"
        self.after_request: Callable[[], None] | None = None  # set while a max_requests limit is pending
        self.raw: dict[tuple[str, int | None], int] = {}  # (method, status) -> finished requests
        self.buckets = [0] * (len(traffic.BUCKETS) + 1)  # durations, one count per bucket (+Inf last)
        self.seconds = 0.0  # sum of durations
        self._keys = itertools.count()

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            self.websockets += 1
            try:
                await self._run(scope, receive, send, f"WEBSOCKET {scope.get('path', '')}")
            finally:
                self.websockets -= 1
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        key = next(self._keys)
        method = scope.get("method", "?")
        label = f"{method} {scope.get('path', '')}"
        start = time.monotonic()
        clock = self.inflight[key] = AppClock(start, label)
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
            await self._run(scope, receive_on_the_clients_time, send_and_note_status, label)
        finally:
            seconds = time.monotonic() - start
            del self.inflight[key]
            self.total += 1
            # Raw (method, status) here; labels are computed when the counts are sent (pongs are rare).
            counted = (method if method in traffic.METHODS else "other", status[0])  # bounded: no client-made keys
            self.raw[counted] = self.raw.get(counted, 0) + 1
            self.buckets[bisect.bisect_left(traffic.BUCKETS, seconds)] += 1
            self.seconds += seconds
            if self.after_request is not None:
                self.after_request()

    async def _run(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any],
                   label: str) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            detail = "".join(traceback.format_exception(exc)).rstrip()
            log.event("app_error", f"{label} raised {type(exc).__name__}: {exc}\n{detail}", warning=True,
                      request_path=scope.get("path", ""), request_method=scope.get("method"))
            raise

    def counted(self) -> traffic.Traffic:
        """The counts so far (cumulative since the worker started)."""
        counts: dict[tuple[str, str], int] = {}
        for (method, status), n in list(self.raw.items()):
            key = (traffic.method_label(method), traffic.status_class(status))
            counts[key] = counts.get(key, 0) + n
        return traffic.Traffic(counts, tuple(self.buckets), self.seconds)

    def oldest(self, now: float | None = None) -> tuple[float, str] | None:
        """(seconds of the app's time, "METHOD /path") of the request that has kept the app busy longest, or None
        when idle."""
        if not self.inflight:
            return None
        at = time.monotonic() if now is None else now
        clock = max(self.inflight.values(), key=lambda c: c.age(at))
        return clock.age(at), clock.label
