"""Broadcast flow control: a rate budget per sender, bounded queues, and the primary's relay to every worker.

A broadcast travels worker → primary → every other worker over the channels (:mod:`corepool.channel`). Each
hop has a bound, and every message beyond one is accounted for, never lost silently:

=========================  ===================================================  ==================================
where                      bound                                                beyond it
=========================  ===================================================  ==================================
``corepool.broadcast()``   the encoded message ≤ ``max_message_bytes`` (and     refused: ``broadcast()`` returns
(the sending worker)       ≤ :data:`corepool.channel.MAX_FRAME`); a budget of   False
                           :data:`RATE` messages and :data:`BYTE_RATE` bytes
                           per second (bursts up to the same); an outbox of
                           :data:`QUEUE_MESSAGES` messages / :data:`QUEUE_BYTES`
                           bytes, flushed when the channel has room
the primary, per sender    twice the workers' budget (only a worker that        dropped and counted
                           bypasses ``broadcast()`` reaches it)
the primary, per           a queue of :data:`QUEUE_MESSAGES` messages /         dropped and counted
destination worker         :data:`QUEUE_BYTES` bytes, flushed when its
                           channel has room
=========================  ===================================================  ==================================

Drops are logged twice per burst, not per message: when dropping starts, and when it ends with the count.
Queued messages never fill more than half of a channel's buffer (:func:`corepool.channel.has_room`), so pings
and pongs always find room: a flood never makes a worker look dead, and nothing here ever blocks.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corepool import channel, log

RATE = 1000.0  # broadcasts per second one worker may send (and its burst)
BYTE_RATE = 4.0 * 1024 * 1024  # bytes per second one worker may send (and its burst)
QUEUE_MESSAGES = 1024  # messages waiting for a channel with room, per worker (outbox) and per destination (relay)
QUEUE_BYTES = 4 * 1024 * 1024  # ... and their bytes (at least 4 messages of max_message_bytes)
GUARD = 2.0  # the primary's per-sender budget, as a multiple of the workers' own
QUIET = 1.0  # seconds without a miss that end a burst of misses (for logging)
RELAY_SLACK = 64  # bytes the primary's relayed message may exceed the sender's ("sender": pid)


def broadcast_limit(max_message_bytes: int) -> int:
    """The largest encoded broadcast a worker may send."""
    return min(max_message_bytes, channel.MAX_FRAME)


def queue_bytes(max_message_bytes: int) -> int:
    return max(QUEUE_BYTES, 4 * broadcast_limit(max_message_bytes))


@dataclass
class Budget:
    """A token bucket of messages and bytes, refilled continuously; pure (the clock is passed in)."""

    rate: float = RATE
    byte_rate: float = BYTE_RATE
    messages: float = RATE
    size: float = BYTE_RATE
    at: float | None = None

    def take(self, nbytes: int, now: float) -> bool:
        """Spend one message of ``nbytes`` if the budget allows it now."""
        if self.at is not None:
            elapsed = max(0.0, now - self.at)
            self.messages = min(self.rate, self.messages + elapsed * self.rate)
            self.size = min(self.byte_rate, self.size + elapsed * self.byte_rate)
        self.at = now
        if self.messages < 1 or self.size < nbytes:
            return False
        self.messages -= 1
        self.size -= nbytes
        return True


@dataclass
class BurstLog:
    """Counts refusals or drops and logs a burst of them twice: when it starts, and when it ends with its count.

    A burst ends at the next message that gets through after :data:`QUIET` seconds without a miss (a sender
    held at its rate limit lets one through now and then: that is still the same burst), or when a queue drains.
    """

    what: str  # "broadcasts to worker 123", say
    count: int = 0
    total: int = 0
    last_miss: float = 0.0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def miss(self, reason: str, detail: str = "", verb: str = "dropping", now: float | None = None) -> None:
        """One more message missed for ``reason`` (short: "queue full"); ``detail`` goes in the first line."""
        if not self.count:
            log.event("broadcast", f"{verb} {self.what}: {reason}{': ' + detail if detail else ''} "
                      "(counted; logged again when this burst ends)", warning=True)
        self.count += 1
        self.total += 1
        self.reasons[reason] += 1
        self.last_miss = time.monotonic() if now is None else now

    def end(self, verb: str = "dropped", now: float | None = None, drained: bool = False) -> None:
        """A message got through (or a queue drained): log the burst's count if it is over."""
        if not self.count:
            return
        now = time.monotonic() if now is None else now
        if drained or now - self.last_miss >= QUIET:
            reasons = ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common())
            log.event("broadcast", f"{self.count} {self.what} {verb} in this burst ({reasons}); "
                      f"{self.total} in all", warning=True, dropped=self.count)
            self.count = 0
            self.reasons.clear()


@dataclass
class _Queue:
    """Messages for one destination worker, waiting for room on its channel."""

    sock: socket.socket
    pid: int | None
    frames: collections.deque[bytes] = field(default_factory=collections.deque)
    nbytes: int = 0
    armed: Callable[[int], None] | None = None  # our selector callback while we wait for room
    original: Any = None  # the primary's selector callback, restored when the queue is empty
    drops: BurstLog = field(default_factory=lambda: BurstLog("broadcasts"))


class Relay:
    """The primary's side: relays each broadcast to every other serving worker without ever blocking.

    ``selector`` is the primary's; while a destination has queued messages its channel is also watched for
    writing (the primary's own callback still gets every read).
    """

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.selector = selector
        self.queues: dict[int, _Queue] = {}
        self.budgets: dict[int, Budget] = {}
        self.senders: dict[int, BurstLog] = {}
        self.relayed = 0  # messages handed to a destination's channel
        self.dropped = 0  # messages (per destination) dropped, in all

    def forward(
        self,
        sender: int,
        sender_pid: int | None,
        message: Mapping[str, Any],
        targets: Mapping[int, tuple[int | None, socket.socket]],
        max_message_bytes: int,
        now: float | None = None,
    ) -> None:
        """Relay one ``broadcast`` message from ``sender`` to every one of ``targets`` (wid → (pid, channel)) but
        the sender itself. ``sender`` need not be a target (another host's messages, say: ``sender_pid`` None)."""
        now = time.monotonic() if now is None else now
        self._forget_all_but(targets, now)
        what = f"broadcasts from worker {sender_pid}" if sender_pid is not None else "broadcasts from other hosts"
        senders = self.senders.setdefault(sender, BurstLog(what))
        destinations = sum(1 for wid in targets if wid != sender)
        topic = message.get("topic")
        if not isinstance(topic, str):
            self._drop_for_all(senders, "no string topic", destinations)
            return
        frame = channel.encode("message", topic=topic, data=message.get("data"), sender=sender_pid)
        if len(frame) > broadcast_limit(max_message_bytes) + RELAY_SLACK:
            self._drop_for_all(senders, "over max_message_bytes", destinations)
            return
        budget = self.budgets.setdefault(sender, Budget(RATE * GUARD, BYTE_RATE * GUARD,
                                                        RATE * GUARD, BYTE_RATE * GUARD))
        if not budget.take(len(frame), now):
            self._drop_for_all(senders, "over the rate limit", destinations,
                               f"{RATE * GUARD:g} messages, {BYTE_RATE * GUARD / 2**20:g} MiB per second", now)
            return
        senders.end(now=now)
        for wid, (pid, sock) in targets.items():
            if wid != sender:
                self._offer(wid, pid, sock, frame, max_message_bytes)

    def _drop_for_all(self, senders: BurstLog, reason: str, destinations: int, detail: str = "",
                      now: float | None = None) -> None:
        senders.miss(reason, detail, now=now)
        self.dropped += destinations

    def _offer(self, wid: int, pid: int | None, sock: socket.socket, frame: bytes, max_message_bytes: int) -> None:
        queue = self.queues.get(wid)
        if queue is not None and queue.sock is not sock:  # a new channel under an old id: start afresh
            self._forget(wid, "its channel changed")
            queue = None
        if queue is None:
            if channel.has_room(sock):
                try:
                    sock.send(frame, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    self.dropped += 1  # the worker is exiting; its exit arrives with SIGCHLD
                    return
                else:
                    self.relayed += 1
                    return
            queue = self.queues[wid] = _Queue(sock, pid)
            queue.drops.what = f"broadcasts to worker {pid}"
        if len(queue.frames) >= QUEUE_MESSAGES or queue.nbytes + len(frame) > queue_bytes(max_message_bytes):
            queue.drops.miss("queue full", f"{QUEUE_MESSAGES} messages or {queue_bytes(max_message_bytes)} bytes "
                             "wait for a worker that is not reading its channel")
            self.dropped += 1
        else:
            queue.frames.append(frame)
            queue.nbytes += len(frame)
        self._arm(wid, queue)

    def _arm(self, wid: int, queue: _Queue) -> None:
        if queue.armed is not None:
            return
        try:
            key = self.selector.get_key(queue.sock)
        except (KeyError, ValueError):  # the primary stopped reading it: the worker is going
            self._forget(wid, "its channel closed")
            return

        def ready(mask: int) -> None:
            if mask & selectors.EVENT_WRITE:
                self._flush(wid)
            if mask & selectors.EVENT_READ:
                original(mask)

        original = key.data
        queue.original, queue.armed = original, ready
        self.selector.modify(queue.sock, key.events | selectors.EVENT_WRITE, ready)

    def _flush(self, wid: int) -> None:
        queue = self.queues.get(wid)
        if queue is None:
            return
        while queue.frames and channel.has_room(queue.sock):
            try:
                queue.sock.send(queue.frames[0], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._forget(wid, "its channel closed")
                return
            queue.nbytes -= len(queue.frames.popleft())
            self.relayed += 1
        if not queue.frames:
            queue.drops.end(drained=True)
            self._disarm(queue)
            del self.queues[wid]

    def _disarm(self, queue: _Queue) -> None:
        if queue.armed is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            key = self.selector.get_key(queue.sock)
            if key.data is queue.armed:
                self.selector.modify(queue.sock, selectors.EVENT_READ, queue.original)
        queue.armed = None

    def _forget(self, wid: int, why: str) -> None:
        queue = self.queues.pop(wid, None)
        if queue is None:
            return
        for _ in queue.frames:
            queue.drops.miss(why)
        self.dropped += len(queue.frames)
        queue.drops.end(drained=True)
        self._disarm(queue)

    def _forget_all_but(self, targets: Mapping[int, tuple[int | None, socket.socket]], now: float) -> None:
        """Queues of workers that are gone or draining: their messages are dropped (and counted). Budgets that
        have been idle long enough to be full again are forgotten (a fresh one is the same), so that 10,000
        worker replacements leave nothing behind."""
        for wid in [w for w in self.queues if w not in targets]:
            self._forget(wid, "the worker is draining or gone")
        for sender in [s for s, b in self.budgets.items() if b.at is None or now - b.at >= 1.0]:
            del self.budgets[sender]
        for sender, burst in list(self.senders.items()):
            burst.end(now=now)
            if not burst.count and sender not in self.budgets:
                del self.senders[sender]


_relays: weakref.WeakKeyDictionary[selectors.BaseSelector, Relay] = weakref.WeakKeyDictionary()


def of(selector: selectors.BaseSelector) -> Relay:
    """The relay working on ``selector`` (the primary's), made on first use."""
    found = _relays.get(selector)
    if found is None:
        found = _relays[selector] = Relay(selector)
    return found
