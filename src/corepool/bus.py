"""The worker-side API for apps: broadcast to every other worker, and subscribe to topics.

    import corepool

    @corepool.on_message("cache.invalidate")
    def drop(data):            # called on the worker's event loop; may also be ``async def``
        cache.pop(data["key"], None)

    corepool.broadcast("cache.invalidate", {"key": "user:42"})   # True: on its way; False: refused

``broadcast`` tells the truth: it returns False, and the message goes nowhere, when it cannot deliver it —

* the data is not JSON-serialisable;
* the encoded message (topic, JSON payload and about 30 bytes of envelope) is over ``max_message_bytes``
  (or over :data:`corepool.channel.MAX_FRAME`, what a channel carries whole);
* this worker is over its budget of :data:`corepool.relay.RATE` messages and :data:`corepool.relay.BYTE_RATE`
  bytes per second (a burst may spend a whole second's budget at once);
* its outbox is full: :data:`corepool.relay.QUEUE_MESSAGES` messages (or :data:`corepool.relay.QUEUE_BYTES`
  bytes) wait for room on the channel to the primary, which takes them as fast as it can relay them.

True means the primary will get the message. It is then relayed to every other serving worker; a worker that
does not read its channel has a queue of the same bound in the primary, beyond which messages to it are dropped,
counted and logged (once when a burst of drops starts, once when it ends). Refusals are logged the same way.
Outside a corepool worker (a unit test of the app, say) ``broadcast`` does nothing and returns False.
``broadcast`` may be called from any thread (WSGI apps run on a thread pool).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from corepool import channel, relay

Handler = Callable[[Any], Awaitable[None] | None]
_handlers: dict[str, list[Handler]] = {}


class _Sender(Protocol):
    sock: socket.socket
    max_message_bytes: int


class Outbox:
    """The worker's bounded queue of broadcasts, flushed on its event loop whenever the channel has room."""

    def __init__(self, sock: socket.socket, max_message_bytes: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self.sock = sock
        self.loop = loop
        self.limit = relay.broadcast_limit(max_message_bytes)
        self.max_bytes = relay.queue_bytes(max_message_bytes)
        self.budget = relay.Budget()
        self.frames: collections.deque[bytes] = collections.deque()
        self.nbytes = 0
        self.accepted = 0
        self.refused = 0
        self.lost = 0  # accepted, then lost because the channel closed (the primary is gone)
        self.refusals = relay.BurstLog("broadcasts")
        self._lock = threading.Lock()  # app threads and the loop share the queue
        self._armed = False

    def offer(self, topic: str, data: Any) -> bool:
        """Queue or send one broadcast; False (and nothing sent) when it cannot be delivered."""
        try:
            frame = channel.encode("broadcast", topic=topic, data=data)
        except (TypeError, ValueError):
            return self._refuse("not JSON-serialisable")
        if len(frame) > self.limit:
            return self._refuse("over max_message_bytes", f"{len(frame)} bytes encoded, the limit is {self.limit}")
        with self._lock:
            if not self.budget.take(len(frame), time.monotonic()):
                return self._refuse("over the rate limit", f"{relay.RATE:g} messages, "
                                    f"{relay.BYTE_RATE / 2**20:g} MiB per second")
            if not self.frames and channel.has_room(self.sock):
                try:
                    self.sock.send(frame, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    pass  # queued below
                except OSError as exc:
                    return self._refuse("channel failed", str(exc.strerror or exc))
                else:
                    return self._accept()
            if len(self.frames) >= relay.QUEUE_MESSAGES or self.nbytes + len(frame) > self.max_bytes:
                return self._refuse("outbox full", f"{relay.QUEUE_MESSAGES} messages or {self.max_bytes} bytes "
                                    "wait for the primary")
            self.frames.append(frame)
            self.nbytes += len(frame)
            arm = not self._armed
            self._armed = True
        if arm:
            self._arm()
        return self._accept()

    def _accept(self) -> bool:
        self.accepted += 1
        self.refusals.end("refused")
        return True

    def _refuse(self, reason: str, detail: str = "") -> bool:
        self.refused += 1
        self.refusals.miss(reason, detail, "refusing")
        return False

    def _arm(self) -> None:
        """Watch the channel for room, on the loop (broadcast may be called from an app thread)."""
        if self.loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.loop.add_writer(self.sock.fileno(), self.flush)
        else:
            self.loop.call_soon_threadsafe(self.loop.add_writer, self.sock.fileno(), self.flush)

    def flush(self) -> None:
        """Send queued broadcasts while the channel has room (called on the loop when it is writable)."""
        with self._lock:
            while self.frames and channel.has_room(self.sock):
                try:
                    self.sock.send(self.frames[0], socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:  # the primary is gone: the worker is about to drain
                    self.lost += len(self.frames)
                    self.frames.clear()
                    self.nbytes = 0
                    break
                self.nbytes -= len(self.frames.popleft())
            if self.frames:
                return
            self._armed = False
        if self.loop is not None:
            with contextlib.suppress(Exception):  # a loop or channel that closed meanwhile
                self.loop.remove_writer(self.sock.fileno())


_outbox: list[Outbox] = []


def on_message(topic: str) -> Callable[[Handler], Handler]:
    """Decorator: call the function with ``data`` whenever another worker broadcasts on ``topic``."""

    def register(handler: Handler) -> Handler:
        _handlers.setdefault(topic, []).append(handler)
        return handler

    return register


def broadcast(topic: str, data: Any = None) -> bool:
    """Send ``data`` (JSON-serialisable) to every other worker.

    True: the message is on its way to the primary. False: refused, nothing was sent (see the module's doc:
    not JSON, over ``max_message_bytes``, over the rate budget, or the outbox is full).
    """
    if not _outbox:
        return False
    return _outbox[0].offer(str(topic), data)


def handlers_for(topic: str) -> list[Handler]:
    return list(_handlers.get(topic, ()))


def attach(link: _Sender) -> None:
    """Called by the worker once its channel is up, on its serving event loop."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    _outbox[:] = [Outbox(link.sock, link.max_message_bytes, loop)]
