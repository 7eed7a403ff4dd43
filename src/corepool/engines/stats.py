"""What one worker knows about its own requests, whatever engine serves them: counts and in-flight clocks.

Finished requests are counted by method and status class, with a duration histogram (:mod:`corepool.traffic`);
each in-flight request has an :class:`AppClock` that says how long it has kept the *app* busy, so the primary can
retire a worker whose request outlives ``request_timeout``, naming that request. Counting is a few dict and list
updates in the worker's memory: no syscall on the request path; the counts travel to the primary with the next
pong. WebSocket sessions are counted as connections, not as requests: they are meant to stay open.

``request_timeout`` is about the app, not the client: a clock is paused while the app waits for a request body
the client has not sent yet (the client's time is ``body_timeout``'s), and a WSGI request's clock starts only
when an app thread takes it. So one slow upload costs a connection, never a worker.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from corepool import log, traffic


class AppClock:
    """How long one request has kept the app busy: wall time since it started, less the time it was paused
    (waiting for the client's body, or for a WSGI thread)."""

    __slots__ = ("label", "method", "paused_at", "paused_for", "start", "task", "thread")

    def __init__(self, start: float, method: str, label: str) -> None:
        self.start, self.method, self.label = start, method, label
        self.paused_for = 0.0
        self.paused_at: float | None = None
        # Who serves it, for the stack of a stuck request (corepool.engines.stuck): the app thread running it
        # (None: the event loop's), and the task whose coroutine awaits for it.
        self.thread: int | None = None
        self.task: asyncio.Task[Any] | None = None

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


class RequestStats:
    """One worker's request counts and in-flight clocks (one object for all of its routes).

    ``threaded``: requests begin and end on several threads (an engine whose app runs on its own threads);
    the counts are then updated under a lock. On one event loop they need none.
    """

    def __init__(self, threaded: bool = False) -> None:
        self.total = 0
        self.websockets = 0
        self.inflight: set[AppClock] = set()
        self.after_request: Callable[[], None] | None = None  # set while a max_requests limit is pending
        self.raw: dict[tuple[str, int | None], int] = {}  # (method, status) -> finished requests
        self.buckets = [0] * (len(traffic.BUCKETS) + 1)  # durations, one count per bucket (+Inf last)
        self.seconds = 0.0  # sum of durations
        self._lock = threading.Lock() if threaded else None

    def begin(self, method: str, path: str) -> AppClock:
        """A request starts: its clock, in flight until :meth:`end`."""
        clock = AppClock(time.monotonic(), method, f"{method} {path}")
        if self._lock is not None:
            clock.thread = threading.get_ident()  # an engine's own app thread
        self.inflight.add(clock)
        return clock

    def end(self, clock: AppClock, status: int | None) -> None:
        """A request is over (``status`` None: the app never answered, the server sent 500 or the client left)."""
        seconds = time.monotonic() - clock.start
        self.inflight.discard(clock)
        method = clock.method
        # Raw (method, status) here; labels are computed when the counts are sent (pongs are rare).
        counted = (method if method in traffic.METHODS else "other", status)  # bounded: no client-made keys
        if self._lock is None:
            self._count(counted, seconds)
        else:
            with self._lock:
                self._count(counted, seconds)
        if self.after_request is not None:
            self.after_request()

    def _count(self, counted: tuple[str, int | None], seconds: float) -> None:
        self.total += 1
        self.raw[counted] = self.raw.get(counted, 0) + 1
        self.buckets[bisect.bisect_left(traffic.BUCKETS, seconds)] += 1
        self.seconds += seconds

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
        clocks = list(self.inflight)
        if not clocks:
            return None
        at = time.monotonic() if now is None else now
        clock = max(clocks, key=lambda c: c.age(at))
        return clock.age(at), clock.label

    def pong(self) -> dict[str, Any]:
        """This worker's request figures, as a pong carries them."""
        oldest = self.oldest()
        return {
            "requests": self.total,
            "inflight": len(self.inflight),
            "oldest": None if oldest is None else [round(oldest[0], 3), oldest[1]],
            "websockets": self.websockets,
            # Cumulative counts by method/status class and durations, for metrics and the canary.
            "traffic": self.counted().to_wire(),
        }

    def limit_requests(self, limit: int, report: Callable[[], None]) -> None:
        """max_requests: call ``report`` once, when this worker has served ``limit`` requests."""

        def check() -> None:
            if self.total >= limit:
                self.after_request = None
                report()

        self.after_request = check


def log_app_error(label: str, exc: BaseException, path: str, method: str | None) -> None:
    """An app's unhandled exception: one log entry with its type and traceback, from the worker that saw it."""
    detail = "".join(traceback.format_exception(exc)).rstrip()
    log.event("app_error", f"{label} raised {type(exc).__name__}: {exc}\n{detail}", warning=True,
              request_path=path, request_method=method)
