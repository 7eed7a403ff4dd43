"""What a worker's or a loader's messages mean (the table in :mod:`corepool.channel`): read off a channel without
letting one peer starve the others, and validated into the policy's events. A message whose fields are not what
a worker sends is a :class:`~corepool.events.WorkerMisbehaved`: the worker cannot be trusted to serve.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corepool import channel, events, log, status, traffic
from corepool.children import Children

MESSAGES_PER_WAKEUP = 64  # per channel and turn of the loop
MAX_LABEL = 200  # characters of a request's "METHOD /path" kept


@dataclass
class Received:
    """The messages waiting on a channel, what was wrong with malformed ones (logged and dropped), and whether
    the peer closed its end (then the channel is unregistered; its exit status arrives with SIGCHLD)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False


def receive(sock: socket.socket, selector: selectors.BaseSelector, sender: str, max_bytes: int) -> Received:
    """At most :data:`MESSAGES_PER_WAKEUP` messages, so that one flooding worker cannot starve the others: the
    selector reports the rest on the next turn."""
    got = Received()
    while len(got.messages) + len(got.errors) < MESSAGES_PER_WAKEUP:
        try:
            raw = sock.recv(channel.recv_size())
        except (BlockingIOError, InterruptedError):
            return got
        except OSError:
            raw = b""
        if not raw:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
            got.closed = True
            return got
        try:
            got.messages.append(channel.decode(raw, max_bytes))
        except channel.ChannelError as exc:
            log.event("channel", f"dropped a message from {sender}: {exc}", warning=True)
            got.errors.append(str(exc))
    return got


def from_worker(wid: int, pid: int | None, message: dict[str, Any], now: float,
                boot_errors: BootErrors) -> events.Event:
    """A worker's message as the policy's event (all but ``hello`` and ``broadcast``, which are the primary's)."""
    kind = message["t"]
    if kind == "ready":
        return events.WorkerReady(wid, now)
    if kind == "draining":
        return events.WorkerDraining(wid, now)
    if kind == "pong":
        return pong(wid, message, now, status.rss_bytes(pid)) or events.WorkerMisbehaved(wid, "a malformed pong", now)
    if kind == "boot_error":
        return events.WorkerBootError(wid, boot_errors.note(message, worker_pid=pid), now)
    log.event("channel", f"a message of unknown type {kind!r} from worker {pid}", warning=True)
    return events.WorkerMisbehaved(wid, f"a message of unknown type {kind!r}", now)


def from_loader(generation: int, message: dict[str, Any], now: float, boot_errors: BootErrors) -> events.Event | None:
    """A loader's ``ready`` or ``boot_error`` as the policy's event (None: any other message)."""
    if message["t"] == "ready":
        return events.LoaderReady(generation, now)
    if message["t"] == "boot_error":
        return events.LoaderBootError(generation, boot_errors.note(message, generation=generation), now)
    return None


def pong(wid: int, message: dict[str, Any], now: float, rss: int | None) -> events.Pong | None:
    """A worker's pong (or unsolicited stats) as an event; None when its fields are not what a worker sends."""
    seq, requests, oldest = message.get("seq"), message.get("requests"), message.get("oldest")
    counts = [message.get(key, 0) for key in ("inflight", "busy_threads", "threads")]
    connections = message.get("connections")
    connections = connections if isinstance(connections, int) and not isinstance(connections, bool) else None
    if not (seq is None or isinstance(seq, int)) or not isinstance(requests, int):
        return None
    if not all(isinstance(n, int) for n in counts):
        return None
    oldest_age: float | None = None
    oldest_label: str | None = None
    if oldest is not None:
        if not (isinstance(oldest, list) and len(oldest) == 2 and isinstance(oldest[0], (int, float))):
            return None
        oldest_age, oldest_label = float(oldest[0]), str(oldest[1])[:MAX_LABEL]
    counted = None
    if message.get("traffic") is not None:
        counted = traffic.Traffic.from_wire(message["traffic"])
        if counted is None:
            return None
    return events.Pong(wid, seq, requests, now, counts[0], oldest_age, oldest_label, counts[1], counts[2], rss,
                       counted, connections)


class BootErrors:
    """Boot errors, with their tracebacks logged once (every worker of a broken app sends the same one)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def note(self, message: dict[str, Any], **fields: Any) -> str:
        error = str(message.get("error", "unknown error"))
        detail = str(message.get("detail", ""))
        if detail and detail not in self.seen:
            self.seen.add(detail)
            log.event("boot_error", f"{error}\n{detail.rstrip()}", warning=True, **fields)
        return error


class Inbox:
    """Reads the children's channels: each message becomes the policy's event (handed to ``emit``), but a pong is
    shown to ``pong`` first (the metrics counters) and a broadcast goes to ``relay``; hello and forked name a
    worker (:mod:`corepool.children`)."""

    def __init__(self, selector: selectors.BaseSelector, emit: Callable[[events.Event], None], max_bytes: int,
                 pong: Callable[[events.Pong], None], relay: Callable[[int, int | None, dict[str, Any]], None]) -> None:
        self.selector, self.emit, self.max_bytes = selector, emit, max_bytes
        self.on_pong, self.relay = pong, relay
        self.boot_errors = BootErrors()

    def worker(self, kids: Children, wid: int) -> None:
        child = kids.workers.get(wid)
        if child is None:
            return
        now, got = time.monotonic(), receive(child.sock, self.selector, f"worker {child.pid}", self.max_bytes)
        for message in got.messages:
            if message["t"] == "hello":
                if isinstance(message.get("pid"), int) and message["pid"] > 0:
                    kids.named(wid, message["pid"], now)
            elif message["t"] == "broadcast":
                self.relay(wid, child.pid, message)
            else:
                event = from_worker(wid, child.pid, message, now, self.boot_errors)
                if isinstance(event, events.Pong):
                    self.on_pong(event)
                self.emit(event)
        if got.errors:
            self.emit(events.WorkerMisbehaved(wid, got.errors[0], now))
        if got.closed and child.pid is None:
            # Its only holder (the worker, or the loader about to fork it) is gone before anyone named it.
            kids.lost(wid, "gone before its pid was known", now)

    def loader(self, kids: Children, generation: int) -> None:
        child = kids.loaders.get(generation)
        if child is None:
            return
        now = time.monotonic()
        for message in receive(child.sock, self.selector, f"the loader of generation {generation}",
                               self.max_bytes).messages:
            if message["t"] == "forked" and isinstance(wid := message.get("wid"), int) \
                    and isinstance(pid := message.get("pid"), int):
                if pid > 0:
                    kids.named(wid, pid, now)
                else:
                    kids.lost(wid, "the loader could not fork it", now)
            elif (event := from_loader(generation, message, now, self.boot_errors)) is not None:
                self.emit(event)
