"""What a worker's or a loader's messages mean (the table in :mod:`corepool.channel`): read off a channel without
letting one peer starve the others, and validated into the policy's events. A message whose fields are not what
a worker sends is a :class:`~corepool.events.WorkerMisbehaved`: the worker cannot be trusted to serve.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from dataclasses import dataclass, field
from typing import Any

from corepool import channel, events, log, traffic

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
