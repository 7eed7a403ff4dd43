"""Broadcast across hosts over Redis pub/sub (``broadcast = "redis://HOST:PORT/DB"``), through redis-py.

Each primary subscribes once to ``broadcast_channel`` and relays what it hears there to its own workers; it
publishes every broadcast its workers send (they also reach this host's other workers through the local relay,
at once, Redis or not). A message on the channel is JSON ``{"o": origin, "s": seq, "t": topic, "d": data}``:
``o`` is a random id of this primary, so a host drops its own messages (its workers had them from the local
relay) and hears each broadcast once; ``s`` counts up per origin, so a message Redis would hand over twice is
delivered once.

Redis never blocks the primary's loop: two threads talk to it (one subscribes and reads, one publishes from a
bounded queue) and hand messages and news to the loop through a socket pair the loop watches. The threads never
log and never touch the primary's state: a process forked while they run inherits nothing they hold but file
descriptors, which :meth:`RedisBackend.fds` names so a forked child closes them.

Lost Redis: the pool keeps serving and local broadcast keeps working; broadcasts published meanwhile do not
reach other hosts (dropped and counted: pub/sub keeps nothing for a subscriber that is away), the subscriber
reconnects with exponential backoff (:data:`BACKOFF_BASE` doubling up to :data:`BACKOFF_MAX`, with jitter),
and ``corepool status`` (``broadcast``), STATUS= and the log say so. A silent connection (a network partition)
is noticed by a PING every :data:`PING_EVERY` seconds that must be answered within :data:`PING_TIMEOUT`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import selectors
import socket
import threading
import time
import uuid
import weakref
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from corepool.backends import Changed, Deliver, redact

QUEUE = 4096  # broadcasts waiting to be published, and messages from other hosts waiting for the loop
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
PING_EVERY = 5.0  # seconds of silence on the subscription before the subscriber PINGs Redis
PING_TIMEOUT = 5.0  # ... and how long the PONG may take before the connection counts as lost
CONNECT_TIMEOUT = 2.0
READ_SLICE = 0.5  # the subscriber's longest wait for a message, so it notices a stop promptly
SEEN_ORIGINS = 1024  # origins whose last sequence number is remembered (duplicates)


def backoff(failures: int, rng: random.Random) -> float:
    """Seconds before reconnect attempt number ``failures`` (1, 2, ...): doubling, capped, ±20 % jitter."""
    base = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1))
    return float(base * rng.uniform(0.8, 1.2))


def encode(origin: str, seq: int, topic: str, data: Any) -> bytes:
    return json.dumps({"o": origin, "s": seq, "t": topic, "d": data}, separators=(",", ":")).encode()


def decode(raw: bytes, limit: int) -> tuple[str, int, str, Any] | None:
    """(origin, seq, topic, data), or None for anything that is not a corepool message within ``limit`` bytes."""
    if len(raw) > limit:
        return None
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    origin, seq, topic = message.get("o"), message.get("s"), message.get("t")
    if not isinstance(origin, str) or not isinstance(seq, int) or not isinstance(topic, str):
        return None
    return origin, seq, topic, message.get("d")


class RedisBackend:
    """The ``redis`` broadcast backend (see the module's doc). Built by :func:`corepool.backends.make`."""

    name = "redis"

    def __init__(self, url: str, channel: str, max_message_bytes: int) -> None:
        self.url, self.channel = url, channel
        self.origin = uuid.uuid4().hex
        # A message is its topic and data (up to max_message_bytes encoded on the channel) plus the envelope.
        self.limit = 2 * max_message_bytes + 256
        self._seq = 0
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)  # the publisher waits here for work
        self._stop = threading.Event()
        self._outbox: collections.deque[bytes] = collections.deque()
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._news: collections.deque[tuple[str, bool]] = collections.deque()
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._socks: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._selector: selectors.BaseSelector | None = None
        self._deliver: Deliver | None = None
        self._changed: Changed | None = None
        # State, written by the threads under _lock.
        self.connected = False
        self.ever_connected = False
        self.down_since: float | None = None
        self.error: str | None = None
        self.retry_at: float | None = None
        self.reconnects = 0
        self.published = 0
        self.received = 0
        self.duplicates = 0
        self.dropped: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------------------------- the loop side

    def open(self, selector: selectors.BaseSelector, deliver: Deliver, changed: Changed) -> None:
        self._selector, self._deliver, self._changed = selector, deliver, changed
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        for target, name in ((self._subscriber, "subscriber"), (self._publisher, "publisher")):
            thread = threading.Thread(target=target, name=f"corepool-redis-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def publish(self, topic: str, data: Any) -> None:
        with self._lock:
            if not self.connected:
                self.dropped["redis down"] += 1
                return
            if len(self._outbox) >= QUEUE:
                self.dropped["publish queue full"] += 1
                return
            self._seq += 1
            try:
                frame = encode(self.origin, self._seq, topic, data)
            except (TypeError, ValueError):
                self.dropped["not JSON"] += 1
                return
            self._outbox.append(frame)
            self._wanted.notify()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                "backend": "redis",
                "url": redact(self.url),
                "channel": self.channel,
                "origin": self.origin,
                "connected": self.connected,
                "state": self._state(),
                "error": None if self.connected else self.error,
                "down_for": None if self.down_since is None else round(now - self.down_since, 3),
                "retry_in": None if self.retry_at is None else round(max(0.0, self.retry_at - now), 3),
                "reconnects": self.reconnects,
                "published": self.published,
                "received": self.received,
                "duplicates": self.duplicates,
                "dropped": dict(sorted(self.dropped.items())),
            }

    def line(self) -> str | None:
        with self._lock:
            if self.connected:
                return None
            return f"broadcast: redis {self._state()}" + (f" ({self.error})" if self.error else "")

    def fds(self) -> list[int]:
        socks = [*list(self._socks), self._wake_r, self._wake_w]
        return [fd for s in socks if (fd := s.fileno()) >= 0]

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._wanted.notify_all()
        for thread in self._threads:
            thread.join(timeout=READ_SLICE + 0.5)  # both threads look at _stop at least that often
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()

    def _state(self) -> str:
        if self.connected:
            return "connected"
        return "down, reconnecting" if self.ever_connected else "connecting"

    def _on_wake(self, _mask: int) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while self._news:
            text, bad = self._news.popleft()
            if self._changed is not None:
                self._changed(text, bad)
        while self._inbox:
            topic, data = self._inbox.popleft()
            if self._deliver is not None:
                self._deliver(topic, data)

    # ---------------------------------------------------------------------------------- the threads' side

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (the loop is behind: it will read everything anyway) or closed
            self._wake_w.send(b"!", socket.MSG_DONTWAIT)

    def _client(self) -> redis.Redis:
        """A client whose sockets are tracked (so forked children close them) and that never retries by itself
        (a retried PUBLISH could arrive twice; reconnecting is ours to pace)."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=None,
                                      socket_keepalive=True, retry=Retry(NoBackoff(), 0),
                                      client_name=f"corepool-{self.origin[:12]}")
        pool = client.connection_pool
        tracked = self._socks
        base = pool.connection_class

        class Tracked(base):  # type: ignore[valid-type,misc]
            def _connect(self) -> socket.socket:
                sock: socket.socket = super()._connect()
                tracked.add(sock)
                return sock

        pool.connection_class = Tracked
        return client

    def _up(self) -> None:
        with self._lock:
            was_down, first = self.down_since, not self.ever_connected
            self.connected, self.ever_connected = True, True
            self.down_since, self.error, self.retry_at = None, None, None
            if not first:
                self.reconnects += 1
        if first:
            self._news.append((f"broadcast: subscribed to {self.channel!r} on {redact(self.url)} "
                               f"(origin {self.origin[:12]})", False))
        else:
            outage = f" after {time.monotonic() - was_down:.1f}s" if was_down is not None else ""
            self._news.append((f"broadcast: redis back{outage}: subscribed to {self.channel!r} again; broadcasts "
                               "reach the other hosts again", False))
        self._wake()

    def _down(self, error: str, delay: float) -> None:
        now = time.monotonic()
        with self._lock:
            was_connected = self.connected
            first_failure = self.down_since is None
            self.connected = False
            self.error = error
            self.retry_at = now + delay
            if first_failure:
                self.down_since = now
            if self._outbox:  # pub/sub keeps nothing for later: these would reach nobody
                self.dropped["redis down"] += len(self._outbox)
                self._outbox.clear()
        if was_connected or (first_failure and not self.ever_connected):
            what = "lost" if was_connected else "cannot reach"
            self._news.append((f"broadcast: {what} redis at {redact(self.url)}: {error}; the pool serves on and "
                               "broadcasts reach this host's workers only; reconnecting with backoff", True))
            self._wake()

    def _subscriber(self) -> None:
        failures = 0
        while not self._stop.is_set():
            client = self._client()
            pubsub = client.pubsub()  # type: ignore[no-untyped-call,unused-ignore]
            try:
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                failures = 0 if self.connected else failures
                failures += 1
                delay = backoff(failures, self._rng)
                self._down(f"{type(exc).__name__}: {exc}", delay)
                self._stop.wait(delay)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
                with contextlib.suppress(Exception):
                    client.close()

    def _listen(self, pubsub: Any) -> None:
        """Read the subscription until a stop or a lost connection (raised)."""
        heard = time.monotonic()
        ping_sent: float | None = None
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=READ_SLICE)
            now = time.monotonic()
            if message is None:
                if ping_sent is not None and now - ping_sent > PING_TIMEOUT:
                    raise redis.ConnectionError(f"no answer to PING within {PING_TIMEOUT:g}s")
                if ping_sent is None and now - heard > PING_EVERY:
                    pubsub.ping()
                    ping_sent = now
                continue
            heard, ping_sent = now, None
            kind = message.get("type")
            if kind == "subscribe":
                self._up()
            elif kind == "message":
                self._received(message.get("data"))

    def _received(self, raw: Any) -> None:
        decoded = decode(raw, self.limit) if isinstance(raw, bytes) else None
        with self._lock:
            if decoded is None:
                self.dropped["malformed"] += 1
                return
            origin, seq, topic, data = decoded
            if origin == self.origin:
                return  # our own: this host's workers had it from the local relay
            last = self._seen.get(origin)
            if last is not None and seq <= last:
                self.duplicates += 1
                return
            self._seen[origin] = seq
            self._seen.move_to_end(origin)
            while len(self._seen) > SEEN_ORIGINS:
                self._seen.popitem(last=False)
            if len(self._inbox) >= QUEUE:
                self.dropped["inbox full"] += 1
                return
            self.received += 1
        self._inbox.append((topic, data))
        self._wake()

    def _publisher(self) -> None:
        client: redis.Redis | None = None
        while True:
            with self._lock:
                while not self._outbox and not self._stop.is_set():
                    self._wanted.wait(READ_SLICE)
                if self._stop.is_set():
                    break
                frame = self._outbox.popleft()
            try:
                if client is None:
                    client = self._client()
                client.publish(self.channel, frame)
            except (redis.RedisError, OSError):
                with self._lock:
                    self.dropped["publish failed"] += 1
                with contextlib.suppress(Exception):
                    assert client is not None
                    client.close()
                client = None  # the subscriber notices the outage and says so; the next publish reconnects
            else:
                with self._lock:
                    self.published += 1
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
