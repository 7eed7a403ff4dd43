"""Where a stuck worker is stuck: a thread of the worker's own that looks, four times a second, for

* a request past ``request_timeout``: the stack of the thread serving it (a WSGI app thread, or the coroutine an
  ASGI request awaits in) and the event loop thread's go to the log, one entry each with the request's method, path
  and age (journald fields ``REQUEST_METHOD``, ``REQUEST_PATH``, ``REQUEST_AGE``, ``STACK_OF``, and the worker's
  ``WORKER_PID``), then an unsolicited pong tells the primary, which replaces the worker at once — found within a
  second of the deadline, whatever ``health_interval`` is;
* an event loop that stopped turning (a blocking call in an ASGI app): its stack, once per stall, after half of
  ``health_timeout`` — before the primary's health check gives up on the worker and kills it.

What Python cannot do itself — a C extension holding the GIL, so that not even this thread runs — is left to
:mod:`faulthandler`: its C watchdog, re-armed by every turn of the loop, writes every thread's stack to stderr
(the journal) after three quarters of ``health_timeout`` without a turn; this thread disarms it when it has logged
the stall itself. Like uWSGI's harakiri-verbose or ``py-spy dump``, without a debugger attached.
"""

from __future__ import annotations

import asyncio
import faulthandler
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

from corepool import log
from corepool.engines.stats import AppClock, RequestStats

CHECK_EVERY = 0.25  # seconds between looks: a request past its deadline is found within this (and a pong's way)
TICK_EVERY = 0.5  # seconds between the loop's heartbeats


def frames_of(thread_id: int) -> list[traceback.FrameSummary] | None:
    """The stack of a thread (outermost first), or None if it is gone."""
    frame = sys._current_frames().get(thread_id)
    return None if frame is None else list(traceback.extract_stack(frame))


def coroutine_frames(coro: Any) -> list[traceback.FrameSummary]:
    """Where a suspended coroutine chain is waiting (outermost first): each awaiting coroutine's current line."""
    out: list[traceback.FrameSummary] = []
    seen = 0
    while coro is not None and seen < 200:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            out.append(traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if isinstance(coro, asyncio.Future) or not isinstance(coro, (types.CoroutineType, types.GeneratorType)):
            break
    return out


def _text(frames: list[traceback.FrameSummary]) -> str:
    return "".join(traceback.format_list(frames)).rstrip()


class StuckWatch:
    """See the module docstring. ``report`` sends the unsolicited pong; it is called from this watch thread."""

    def __init__(self, stats: RequestStats, request_timeout: float, health_timeout: float,
                 report: Callable[[], object]) -> None:
        self.stats, self.request_timeout, self.report = stats, request_timeout, report
        self.stall_after = health_timeout / 2
        self.fatal_after = health_timeout * 0.75
        self.loop_thread = threading.get_ident()
        self.ticked = time.monotonic()
        self.stalled = False  # the current stall is logged
        self.reported: set[AppClock] = set()  # requests whose stacks went to the log (discarded as they end)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corepool-stuck-watch", daemon=True)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tick()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        faulthandler.cancel_dump_traceback_later()

    def _tick(self) -> None:
        assert self._loop is not None
        self.ticked = time.monotonic()
        self.stalled = False
        faulthandler.dump_traceback_later(self.fatal_after, file=sys.stderr)
        self._handle = self._loop.call_later(TICK_EVERY, self._tick)

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY):
            try:
                self.check(time.monotonic())
            except Exception as exc:  # never the reason a worker dies
                log.event("stuck_watch", f"the stuck-request watch failed: {exc!r}", warning=True)

    def check(self, now: float) -> None:
        """One look (see the module docstring)."""
        overdue = []
        if self.request_timeout > 0:
            inflight = list(self.stats.inflight)
            self.reported.intersection_update(inflight)
            overdue = [c for c in inflight if c not in self.reported and c.age(now) > self.request_timeout]
        for clock in overdue:
            self.reported.add(clock)
            self._log_request(clock, now)
        if overdue:
            self.report()
        stalled_for = now - self.ticked
        if stalled_for > self.stall_after and not self.stalled:
            self.stalled = True
            faulthandler.cancel_dump_traceback_later()  # logged here, with its fields: no raw dump as well
            frames = frames_of(self.loop_thread) or []
            log.event("stuck", f"event loop stuck for {stalled_for:.1f}s (no turn since), its stack:\n"
                      f"{_text(frames)}", warning=True, stack_of="event loop", stalled_for=round(stalled_for, 1))

    def _log_request(self, clock: AppClock, now: float) -> None:
        age = clock.age(now)
        method, _, path = clock.label.partition(" ")
        what = f"request {clock.label} running {age:.1f}s, over request_timeout ({self.request_timeout:g}s)"
        fields: dict[str, Any] = {"request_method": method, "request_path": path, "request_age": round(age, 1)}
        thread = clock.thread
        if thread is not None and thread != self.loop_thread:
            frames = frames_of(thread)
            where = "its app thread" if frames is not None else "its app thread (gone)"
            log.event("stuck", f"{what}: {where}'s stack:\n{_text(frames or [])}", warning=True,
                      stack_of="request thread", **fields)
        elif clock.task is not None:
            frames = coroutine_frames(clock.task.get_coro())
            log.event("stuck", f"{what}: it awaits at:\n{_text(frames)}", warning=True, stack_of="request task",
                      **fields)
        loop_frames = frames_of(self.loop_thread) or []
        log.event("stuck", f"{what}: the event loop's stack:\n{_text(loop_frames)}", warning=True,
                  stack_of="event loop", **fields)
