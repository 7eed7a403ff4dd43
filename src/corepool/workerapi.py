"""What an engine is given by its worker, and returns: the spec fixed at fork time, the link to the primary (its
channel), and the worker's exit codes. A leaf: workers, loaders, engines and the primary import it; it imports
none of them."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corepool import bus, channel, log
from corepool.balance import Board
from corepool.settings import HttpOptions

EXIT_OK = 0
EXIT_BOOT_FAILED = 3
EXIT_PRIMARY_GONE = 4


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to know, fixed at fork time."""

    app: str
    app_dir: str
    interface: str
    slot: int
    generation: int
    primary_pid: int
    drain_timeout: float = 27.0
    max_message_bytes: int = channel.DEFAULT_MAX_MESSAGE
    log_level: str = "info"
    routes: tuple[tuple[str, str], ...] = ()  # (socket name, module:attribute) served instead of ``app``
    board: Board | None = None  # the pool's shared connection counts (see corepool.balance)
    http: HttpOptions = field(default_factory=HttpOptions)
    post_fork: str | None = None  # hooks, as module:callable
    worker_exit: str | None = None


class WorkerLink:
    """The worker's end of its channel: ready/pong/broadcast out, ping/message in.

    Reads happen on the serving event loop, so a loop that is blocked cannot answer pings: exactly what the
    primary's health check must notice.
    """

    def __init__(self, sock: socket.socket, max_message_bytes: int) -> None:
        self.sock = sock
        self.max_message_bytes = max_message_bytes
        # What the pong reports: requests served, in-flight requests and the oldest one, busy threads...
        # Answered by the serving loop itself: a busy app thread pool is not a dead worker.
        self.stats: Callable[[], dict[str, Any]] = lambda: {"requests": 0}
        # max_requests: the primary tells the worker its limit; the engine reports on its own on reaching it.
        self.on_request_limit: Callable[[int], None] = lambda _limit: None
        # A reload's canary keeps to its share of accepted connections while it is watched.
        self.on_share: Callable[[bool], None] = lambda _capped: None
        self.on_primary_gone: Callable[[], None] = lambda: None
        # Pings are answered only while this says the runtime that serves requests turns (an engine whose requests
        # are served off this loop, granian's, says so; on the loop that serves them, answering is the proof).
        self.serving: Callable[[], bool] = lambda: True
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, kind: str, **fields: Any) -> bool:
        return channel.send(self.sock, channel.encode(kind, **fields))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start answering on ``loop`` (the one that serves requests)."""
        self._loop = loop
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._readable)
        bus.attach(self)

    def detach(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def _readable(self) -> None:
        while True:
            try:
                raw = self.sock.recv(channel.recv_size())
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                raw = b""
            if not raw:
                self.detach()
                self.on_primary_gone()
                return
            try:
                message = channel.decode(raw, self.max_message_bytes)
            except channel.ChannelError as exc:
                log.event("channel", f"dropped a message from the primary: {exc}", warning=True)
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ping":
            if self.serving():
                self.send("pong", seq=message.get("seq"), **self.stats())
        elif kind == "limit" and isinstance(message.get("requests"), int):
            self.on_request_limit(message["requests"])
        elif kind == "share":
            self.on_share(bool(message.get("capped")))
        elif kind == "message":
            self._deliver(str(message.get("topic")), message.get("data"))

    def _deliver(self, topic: str, data: Any) -> None:
        for handler in bus.handlers_for(topic):
            try:
                result = handler(data)
                if inspect.isawaitable(result) and self._loop is not None:
                    task = asyncio.ensure_future(result, loop=self._loop)
                    task.add_done_callback(_log_handler_failure(topic))
            except Exception as exc:
                log.event("message", f"handler for {topic!r} raised {type(exc).__name__}: {exc}", warning=True)


def _log_handler_failure(topic: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.event("message", f"handler for {topic!r} raised {type(exc).__name__}: {exc}", warning=True)

    return done
