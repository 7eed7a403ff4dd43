"""One app call, whatever protocol carries it: the ASGI ``receive`` and ``send`` of an HTTP request, its clock and
counts, and what happens when the app fails. HTTP/1.1 (:mod:`corepool.engines.http11`) and HTTP/2
(:mod:`corepool.engines.http2`) subclass :class:`AppCall` with the way their bytes go out."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from corepool import log
from corepool.engines.front import access_line
from corepool.engines.stats import AppClock, current_clock, log_app_error

if TYPE_CHECKING:
    from corepool.engines.site import Site


_EAGER = sys.version_info >= (3, 12)  # asyncio.Task(..., eager_start=True)


def start(call: AppCall) -> None:
    """Call the app: a task, started eagerly where asyncio can (Python 3.12+), so that an app that answers without
    waiting is done before this returns, without a turn of the loop (and without a task to track)."""
    coro = call.run()
    if _EAGER:
        task: asyncio.Task[None] = asyncio.Task(coro, loop=call.loop, eager_start=True)  # type: ignore[call-arg]
    else:
        task = call.loop.create_task(coro)
    if not task.done():
        tasks = call.site.server_state.tasks  # uvicorn's shutdown waits for them
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        call.task = task  # where it awaits, if it gets stuck (corepool.engines.stuck)
        if call.clock is not None:  # started eagerly: its clock is there already
            call.clock.task = task


class AppCall:
    """The protocol-neutral part of a request (see the module docstring). A subclass writes the response
    (:meth:`_start`, :meth:`_body`, :meth:`_zerocopysend`, :meth:`_failed`, :meth:`_abort`) and says how to wait for
    room to write (:meth:`_room`) and how the body is asked for (:meth:`_want_body`)."""

    __slots__ = ("body", "body_waits", "clock", "complete", "disconnected", "final", "loop", "more_body",
                 "response_headers", "scope", "sent", "site", "started", "status", "task", "waiter")  # fmt: skip

    def __init__(self, site: Site, loop: asyncio.AbstractEventLoop, scope: dict[str, Any]) -> None:
        self.site, self.loop, self.scope = site, loop, scope
        self.body = b""
        self.more_body = True
        self.final = False  # the last http.request message went to the app: receive() now waits for the end
        self.body_waits = not site.wsgi
        self.waiter: asyncio.Future[None] | None = None
        self.clock: AppClock | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = self.complete = self.disconnected = False
        self.status: int | None = None
        self.sent = 0
        self.response_headers: list[tuple[bytes, bytes]] = []

    # The app call.

    async def run(self) -> None:
        site = self.site
        scope = self.scope
        clock = self.clock = site.stats.begin(scope["method"], scope["path"])
        clock.task = self.task  # None when started eagerly: start() sets it if the call has to wait
        if site.wsgi:
            current_clock.set(clock)  # the bridge pauses it until an app thread takes the request
        try:
            await site.app(scope, self.receive, self.send)
        except Exception as exc:
            log_app_error(clock.label, exc, scope["path"], scope["method"])
            self._failed()
        except BaseException:  # cancelled: no made-up answer, the request ends
            self._abort()
            raise
        else:
            if not self.started and not self.disconnected:
                log.event("app_error", f"{clock.label}: the app returned without starting a response", warning=True)
                self._failed()
            elif not self.complete and not self.disconnected:
                log.event("app_error", f"{clock.label}: the app returned without finishing its response",
                          warning=True)
                self._abort()
        finally:
            site.stats.end(clock, self.status)
            if site.access_log is not None:
                line = access_line(site.access_log, scope, self.status or 0, self.response_headers, self.sent,
                                   clock.age(time.monotonic()))  # fmt: skip
                log.event("access", line, request_path=scope["path"], status=self.status)

    # receive

    async def receive(self) -> dict[str, Any]:
        if not self.body and not self.final and self.more_body and not self.disconnected and not self.complete:
            await self._wait_for_body()
        if self.disconnected or self.complete or (self.final and not self.body):
            if not self.disconnected and not self.complete:
                await self._wait()  # the body is in: what comes next is the end (a disconnect, or the response)
            return {"type": "http.disconnect"}
        body, self.body = self.body, b""
        if not self.more_body:
            self.final = True
        self._taken(len(body))
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def _wait_for_body(self) -> None:
        self._want_body()
        clock = self.clock if self.body_waits else None
        if clock is not None:
            clock.pause()  # the client's time, not the app's: request_timeout does not count it
        try:
            await self._wait()
        finally:
            if clock is not None:
                clock.resume()

    async def _wait(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def arrived(self, data: bytes, more: bool) -> None:
        """Body bytes from the client (``more`` False: its end)."""
        if data:
            self.body = self.body + data if self.body else data
        if not more:
            self.more_body = False
        self.wake()

    def gone(self) -> None:
        """The client left: the app's next receive() says so, its sends are dropped."""
        if not self.complete:
            self.disconnected = True
            self.wake()

    # send

    async def send(self, message: dict[str, Any]) -> None:
        await self._room()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            self.status = message["status"]
            if self.site.access_log is not None:
                self.response_headers = list(message.get("headers", ()))
            self.started = True
            self._start(message)
            return
        if self.complete:
            raise RuntimeError(f"unexpected ASGI message {kind!r} after the response was complete")
        if kind == "http.response.body":
            body = message.get("body", b"")
            self.sent += len(body)
            waits = self._body(body, message.get("more_body", False))
            if waits is not None:  # HTTP/2: the stream's flow-control window is full
                await waits
        elif kind == "http.response.pathsend":
            with open(message["path"], "rb") as file:  # the whole file at path is the rest of the body
                await self._zerocopysend(file, 0, None, False)
        elif kind == "http.response.zerocopysend":
            await self._zerocopysend(message["file"], message.get("offset"), message.get("count"),
                                     message.get("more_body", False))  # fmt: skip
        else:
            raise RuntimeError(f"expected ASGI message 'http.response.body', got {kind!r}")

    # What a protocol provides.

    async def _room(self) -> None:
        """Until the connection can take more of the response (back-pressure)."""

    def _want_body(self) -> None:
        """The app waits for body bytes: let the client send them."""

    def _taken(self, size: int) -> None:
        """The app took ``size`` body bytes: room for more."""

    def _start(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _body(self, body: bytes, more: bool) -> Awaitable[None] | None:
        """Send a body block; an awaitable when it must wait to go (None: it went)."""
        raise NotImplementedError

    async def _zerocopysend(self, file: Any, offset: int | None, count: int | None, more: bool) -> None:
        raise NotImplementedError

    def _failed(self) -> None:
        """The app failed: a 500 if it had not started its response, else the request ends unfinished."""
        raise NotImplementedError

    def _abort(self) -> None:
        """End the request now, unfinished (the client must not take a cut response for a whole one)."""
        raise NotImplementedError
