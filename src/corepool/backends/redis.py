"""Broadcast across hosts over Redis pub/sub (``broadcast = "redis://HOST:PORT/DB"``), through redis-py.

Each primary subscribes once to ``broadcast_channel`` and relays what it hears there to its own workers; it
publishes every broadcast its workers send (they also reach this host's other workers through the local relay,
at once, Redis or not). A message on the channel is JSON ``{"o": origin, "s": seq, "t": topic, "d": data}``:
``o`` is a random id of this primary, so a host drops its own messages (its workers had them from the local
relay) and hears each broadcast once; ``s`` counts up per origin, so a message Redis would hand over twice is
delivered once.

Redis never blocks the primary's loop, and redis-py never runs in the primary: a small **bridge** process,
forked by the primary (and closing every descriptor but its channel), talks to Redis — one thread subscribes
and reads, the main one publishes — and exchanges :mod:`corepool.channel` messages with the primary over a
socket pair the primary's loop watches. Threads in the primary itself would not do: the primary forks loaders
and workers, and a child forked while a Redis thread held a lock (an import's, for one) inherits it held
forever — a worker hung at boot that way in this module's first version. The bridge exits when the primary
closes its end; if it dies, the primary starts another one at once, up to :data:`QUICK_DEATHS` times in a row
for bridges that ran less than :data:`RESPAWN_AFTER` seconds (then broadcasts stay on this host, and the
status says so: no fork loop).

=================  =========  ===============================================================================
``t``              direction  fields
=================  =========  ===============================================================================
``publish``        p → b      ``topic``, ``data``: one broadcast of this host's workers
``message``        b → p      ``topic``, ``data``: a broadcast from another host
``state``          b → p      ``connected``, ``error``, ``news`` (a line to log), ``bad`` (a warning?)
``stats``          b → p      ``published``, ``received``, ``duplicates``, ``dropped`` (by reason)
=================  =========  ===============================================================================

Lost Redis: the pool keeps serving and local broadcast keeps working; broadcasts published meanwhile do not
reach other hosts (dropped and counted: pub/sub keeps nothing for a subscriber that is away), the bridge
reconnects with exponential backoff (:data:`BACKOFF_BASE` doubling up to :data:`BACKOFF_MAX`, with jitter),
and ``corepool status`` (``broadcast``), STATUS= and the log say so. A silent connection (a network partition)
is noticed by a PING every :data:`PING_EVERY` seconds that must be answered within :data:`PING_TIMEOUT`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import threading
import time
import uuid
from typing import Any

from corepool import channel
from corepool.backends.base import Changed, Deliver, Fork, redact

BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
PING_EVERY = 5.0  # seconds of silence on the subscription before the bridge PINGs Redis
PING_TIMEOUT = 5.0  # ... and how long the PONG may take before the connection counts as lost
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0  # a PUBLISH that gets no answer this long counts as failed (a partition, a stalled Redis)
READ_SLICE = 0.5  # the subscriber's longest wait for a message
STATS_EVERY = 0.1  # the bridge sends its counts at most this often (and whenever they change)
SEEN_ORIGINS = 1024  # origins whose last sequence number is remembered (duplicates)
RESPAWN_AFTER = 10.0  # a bridge that ran this long before dying was not a crash loop
QUICK_DEATHS = 5  # bridges in a row that died sooner than that before the primary gives up
STOP_WAIT = 1.0  # seconds the primary waits for the bridge to exit at its own exit, before SIGKILL


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


# ------------------------------------------------------------------------------------------ the primary


class RedisBackend:
    """The ``redis`` broadcast backend, as the primary sees it (see the module's doc)."""

    name = "redis"

    def __init__(self, url: str, channel_name: str, max_message_bytes: int) -> None:
        self.url, self.channel = url, channel_name
        self.max_message_bytes = max_message_bytes
        self.origin = uuid.uuid4().hex
        self.sock: socket.socket | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.connected = False
        self.ever_connected = False
        self.error: str | None = None
        self.down_since: float | None = None
        self.reconnects = 0
        self.bridge_deaths = 0
        self.quick_deaths = 0
        self.stats: dict[str, Any] = {"published": 0, "received": 0, "duplicates": 0, "dropped": {}}
        self.dropped: collections.Counter[str] = collections.Counter()  # in the primary, before the bridge
        self._selector: selectors.BaseSelector | None = None
        self._deliver: Deliver | None = None
        self._changed: Changed | None = None
        self._fork: Fork | None = None

    def open(self, selector: selectors.BaseSelector, deliver: Deliver, changed: Changed, fork: Fork) -> None:
        self._selector, self._deliver, self._changed, self._fork = selector, deliver, changed, fork
        self._spawn()

    def _spawn(self) -> None:
        assert self._fork is not None and self._selector is not None
        primary_end, bridge_end = channel.pair()
        url, name, origin, limit = self.url, self.channel, self.origin, self.max_message_bytes
        try:
            pid = self._fork(lambda: bridge_main(bridge_end, url, name, origin, limit), [primary_end])
        except OSError as exc:
            primary_end.close()
            bridge_end.close()
            self._went_down(f"cannot start the Redis bridge: {exc.strerror or exc}", True)
            return
        bridge_end.close()
        self.sock, self.pid, self.started_at = primary_end, pid, time.monotonic()
        self._selector.register(primary_end, selectors.EVENT_READ, self._readable)

    def publish(self, topic: str, data: Any) -> None:
        if not self.connected or self.sock is None:
            self.dropped["redis down"] += 1
        elif not channel.send(self.sock, channel.encode("publish", topic=topic, data=data)):
            self.dropped["bridge busy"] += 1

    def exited(self, pid: int, description: str) -> bool:
        """The primary reaped ``pid``: True if it was the bridge (replaced, or the backend stays down)."""
        if pid != self.pid:
            return False
        self.pid = None
        self._close_sock()
        self.bridge_deaths += 1
        ran = time.monotonic() - self.started_at
        self.quick_deaths = 0 if ran >= RESPAWN_AFTER else self.quick_deaths + 1
        if self.quick_deaths < QUICK_DEATHS:
            self._went_down(f"the Redis bridge process {pid} died ({description}); starting another", True)
            self._spawn()
        else:
            self._went_down(f"the Redis bridge process died {self.quick_deaths} times in a row, the last ({pid}) "
                            f"after {ran:.1f}s ({description}); broadcasts stay on this host until the pool "
                            "restarts", True)
        return True

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        dropped = collections.Counter(self.dropped)
        dropped.update(self.stats.get("dropped", {}))
        return {
            "backend": "redis",
            "url": redact(self.url),
            "channel": self.channel,
            "origin": self.origin,
            "connected": self.connected,
            "state": self._state(),
            "error": None if self.connected else self.error,
            "down_for": None if self.down_since is None else round(now - self.down_since, 3),
            "reconnects": self.reconnects,
            "bridge_pid": self.pid,
            "published": self.stats.get("published", 0),
            "received": self.stats.get("received", 0),
            "duplicates": self.stats.get("duplicates", 0),
            "dropped": dict(sorted(dropped.items())),
        }

    def line(self) -> str | None:
        if self.connected:
            return None
        return f"broadcast: redis {self._state()}" + (f" ({self.error})" if self.error else "")

    def fds(self) -> list[int]:
        return [] if self.sock is None else [self.sock.fileno()]

    def close(self) -> None:
        self._close_sock()  # the bridge reads EOF and exits
        pid, self.pid = self.pid, None
        if pid is None:
            return
        deadline = time.monotonic() + STOP_WAIT
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG)[0] == 0:
                if time.monotonic() >= deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.01)

    def _close_sock(self) -> None:
        if self.sock is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.sock)
        self.sock.close()
        self.sock = None

    def _state(self) -> str:
        if self.connected:
            return "connected"
        if self.pid is None and self.bridge_deaths:
            return "down (no bridge)"
        return "down, reconnecting" if self.ever_connected else "connecting"

    def _went_down(self, error: str, bad: bool) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.connected, self.error = False, error
        if self._changed is not None:
            self._changed(f"broadcast: {error}", bad)

    def _readable(self, _mask: int) -> None:
        while self.sock is not None:
            try:
                raw = self.sock.recv(channel.recv_size())
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                raw = b""
            if not raw:  # the bridge is exiting; its exit status arrives with SIGCHLD
                with contextlib.suppress(KeyError, ValueError):
                    assert self._selector is not None
                    self._selector.unregister(self.sock)
                return
            try:
                message = channel.decode(raw, self.max_message_bytes)
            except channel.ChannelError:
                self.dropped["malformed from the bridge"] += 1
                continue
            self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "message" and isinstance(message.get("topic"), str):
            if self._deliver is not None:
                self._deliver(message["topic"], message.get("data"))
        elif kind == "stats":
            self.stats = message
        elif kind == "state":
            connected, news = bool(message.get("connected")), str(message.get("news", ""))
            if connected:
                if self.ever_connected:
                    self.reconnects += 1
                self.connected, self.ever_connected, self.error, self.down_since = True, True, None, None
            else:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                self.connected, self.error = False, str(message.get("error") or "")
            if news and self._changed is not None:
                self._changed(news, bool(message.get("bad")))


# ------------------------------------------------------------------------------------------- the bridge


def bridge_main(sock: socket.socket, url: str, channel_name: str, origin: str, max_message_bytes: int) -> int:
    """The bridge process: forked by the primary; returns its exit code when the primary closes its end."""
    keep = sock.fileno()
    os.closerange(3, keep)  # listening sockets, the notify socket, ...: none of the bridge's business
    os.closerange(keep + 1, max(keep + 2, os.sysconf("SC_OPEN_MAX")))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C reaches the whole process group; the primary decides
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU,
                signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(Exception):
        from setproctitle import setproctitle

        setproctitle("corepool: redis broadcast bridge")
    sock.setblocking(True)
    bridge = _Bridge(sock, url, channel_name, origin, max_message_bytes)
    return bridge.run()


class _Bridge:
    def __init__(self, sock: socket.socket, url: str, channel_name: str, origin: str, max_message_bytes: int) -> None:
        import redis  # here, in the bridge only: the primary and the workers never import redis-py

        self.redis = redis
        self.sock, self.url, self.channel, self.origin = sock, url, channel_name, origin
        self.max_message_bytes = max_message_bytes
        self.limit = 2 * max_message_bytes + 256  # topic and data, JSON-encoded, plus the envelope
        self.rng = random.Random()
        self.seq = 0
        self.lock = threading.Lock()  # the two threads share the channel and the counts
        self.stop = threading.Event()
        self.connected = False
        self.ever_connected = False
        self.down_since: float | None = None
        self.subscriptions = 0  # counts (re)subscriptions: the publisher reconnects after each outage
        self.seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.counts: dict[str, Any] = {"published": 0, "received": 0, "duplicates": 0}
        self.dropped: collections.Counter[str] = collections.Counter()
        self.stats_sent_at = 0.0
        self.stats_dirty = False

    def run(self) -> int:
        subscriber = threading.Thread(target=self._subscriber, name="corepool-redis-subscriber", daemon=True)
        subscriber.start()
        client = None
        client_for = 0  # the subscription the publisher's connection was made under
        while True:
            try:
                raw = self.sock.recv(channel.recv_size())
            except OSError:
                raw = b""
            if not raw:
                break  # the primary is gone or done
            try:
                message = channel.decode(raw, self.max_message_bytes)
            except channel.ChannelError:
                continue
            if message["t"] != "publish" or not isinstance(message.get("topic"), str):
                continue
            self.seq += 1
            try:
                frame = encode(self.origin, self.seq, message["topic"], message.get("data"))
                if client is not None and client_for != self.subscriptions:
                    with contextlib.suppress(Exception):  # made before the last outage: it may be dead
                        client.close()
                    client = None
                if client is None:
                    client, client_for = self._client(), self.subscriptions
                client.publish(self.channel, frame)
            except (self.redis.RedisError, OSError):
                self._count(dropped="publish failed")
                with contextlib.suppress(Exception):
                    assert client is not None
                    client.close()
                client = None  # the subscriber notices the outage and says so; the next publish reconnects
            else:
                self._count("published")
        self.stop.set()
        return 0

    # ------------------------------------------------------------------------------------------- channel

    def _send(self, kind: str, **fields: Any) -> None:
        with self.lock, contextlib.suppress(OSError):  # the primary is gone: run() sees EOF and exits
            self.sock.sendall(channel.encode(kind, **fields))

    def _count(self, counter: str | None = None, dropped: str | None = None) -> None:
        with self.lock:
            if counter is not None:
                self.counts[counter] += 1
            if dropped is not None:
                self.dropped[dropped] += 1
            self.stats_dirty = True
        self._stats()

    def _stats(self, force: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            if not self.stats_dirty or (not force and now - self.stats_sent_at < STATS_EVERY):
                return
            self.stats_dirty, self.stats_sent_at = False, now
            fields = {**self.counts, "dropped": dict(self.dropped)}
        self._send("stats", **fields)

    def _client(self) -> Any:
        # No retries of its own: a retried PUBLISH could arrive twice, and reconnecting is ours to pace.
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return self.redis.Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT,
                                         socket_timeout=COMMAND_TIMEOUT, socket_keepalive=True,
                                         retry=Retry(NoBackoff(), 0), client_name=f"corepool-{self.origin[:12]}")

    # ---------------------------------------------------------------------------------------- subscriber

    def _subscriber(self) -> None:
        failures = 0
        while not self.stop.is_set():
            client = self._client()
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except (self.redis.RedisError, OSError) as exc:
                failures = 1 if self.connected else failures + 1
                self._down(f"{type(exc).__name__}: {exc}")
                self.stop.wait(backoff(failures, self.rng))
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
                with contextlib.suppress(Exception):
                    client.close()

    def _listen(self, pubsub: Any) -> None:
        """Read the subscription until a stop or a lost connection (raised)."""
        heard = time.monotonic()
        ping_sent: float | None = None
        while not self.stop.is_set():
            message = pubsub.get_message(timeout=READ_SLICE)
            now = time.monotonic()
            if message is None:
                self._stats(force=True)
                if ping_sent is not None and now - ping_sent > PING_TIMEOUT:
                    raise self.redis.ConnectionError(f"no answer to PING within {PING_TIMEOUT:g}s")
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

    def _up(self) -> None:
        first = not self.ever_connected
        outage = "" if self.down_since is None else f" after {time.monotonic() - self.down_since:.1f}s"
        self.connected, self.ever_connected, self.down_since = True, True, None
        self.subscriptions += 1
        if first:
            news = f"broadcast: subscribed to {self.channel!r} on {redact(self.url)} (origin {self.origin[:12]})"
        else:
            news = (f"broadcast: redis back{outage}: subscribed to {self.channel!r} again; broadcasts reach the "
                    "other hosts again")
        self._send("state", connected=True, error=None, news=news, bad=False)

    def _down(self, error: str) -> None:
        was_connected = self.connected
        first_failure = self.down_since is None
        self.connected = False
        if first_failure:
            self.down_since = time.monotonic()
        news = ""
        if was_connected or (first_failure and not self.ever_connected):
            what = "lost" if was_connected else "cannot reach"
            news = (f"broadcast: {what} redis at {redact(self.url)}: {error}; the pool serves on and broadcasts "
                    "reach this host's workers only; reconnecting with backoff")
        self._send("state", connected=False, error=error, news=news, bad=True)

    def _received(self, raw: Any) -> None:
        decoded = decode(raw, self.limit) if isinstance(raw, bytes) else None
        if decoded is None:
            self._count(dropped="malformed")
            return
        origin, seq, topic, data = decoded
        if origin == self.origin:
            return  # our own: this host's workers had it from the local relay
        last = self.seen.get(origin)
        if last is not None and seq <= last:
            self._count("duplicates")
            return
        self.seen[origin] = seq
        self.seen.move_to_end(origin)
        while len(self.seen) > SEEN_ORIGINS:
            self.seen.popitem(last=False)
        self._send("message", topic=topic, data=data)
        self._count("received")
