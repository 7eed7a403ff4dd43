"""The load-balancer health endpoint: 200 while the pool serves at full capacity, 503 otherwise, with the reason.

A socket of its own — a systemd socket named ``health`` (``FileDescriptorName=health``, or
``--bind health=ADDR``) or the ``health_bind`` address — answered by the primary itself, never by a worker: the
answer is the pool's state as the primary knows it, and a socket named health never reaches a worker (the
primary closes it in every process it forks).

=========================================================  ======  =============================================
the pool                                                   answer  body starts with
=========================================================  ======  =============================================
running, every slot has a ready worker (reloads included:  200     ``ok``
capacity never drops during a roll)
running, some slots without a ready worker (a crashed      200     ``degraded``
worker being replaced), at least one ready
starting (not every worker ready yet)                      503     ``starting``
host draining (``corepool drain``, or a stop with          503     ``draining``
``drain_seconds``): every worker still serves
stopping                                                   503     ``stopping``
no ready worker                                            503     ``unavailable``
=========================================================  ======  =============================================

A degraded pool still answers 200 on purpose: one worker's crash must not take a whole host out of the
balancer, and a request of death that hit every host at once must not take out the fleet (HAProxy with every
server down answers every client 503). Degraded capacity is visible in the body, ``corepool status`` and STATUS=.

:class:`HealthServer` is a tiny non-blocking HTTP/1.x responder driven by the primary's ``selectors`` loop:
``GET`` and ``HEAD`` on any path, one answer per connection (``Connection: close``), a bounded number of
connections (the oldest is dropped beyond :data:`MAX_CONNECTIONS`), request heads bounded to
:data:`MAX_REQUEST_BYTES`; nothing in it ever blocks.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass

from corepool import listeners
from corepool.policy import Policy, PoolPhase, WorkerState

NAME = "health"  # the socket name that makes a listener the health endpoint
MAX_CONNECTIONS = 32  # checks at once (a few balancers, each checking every few seconds); beyond, the oldest goes
MAX_REQUEST_BYTES = 8192
BACKLOG = 64

_REASONS = {200: b"OK", 400: b"Bad Request", 405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
            503: b"Service Unavailable"}


@dataclass(frozen=True)
class Verdict:
    """What the endpoint answers now: an HTTP status and a one-line reason (the body)."""

    code: int
    reason: str

    @property
    def ok(self) -> bool:
        return self.code == 200


def verdict(p: Policy) -> Verdict:
    """The health of the pool ``p`` as a load balancer should see it (pure: reads the policy's state)."""
    ready_slots = {w.slot for w in p.workers.values() if w.state is WorkerState.READY and w.kill_reason is None}
    ready = len(ready_slots & set(p.slots))
    counts = f"{ready}/{len(p.slots)} workers ready, generation {p.generation}"
    if p.phase in (PoolPhase.STOPPING, PoolPhase.EXITED):
        return Verdict(503, f"stopping: {counts}")
    if p.phase is not PoolPhase.RUNNING:
        return Verdict(503, f"starting: {counts}")
    if p.host_draining:
        after = "then stopping" if p.host_drain_then_stop else "until cancelled"
        return Verdict(503, f"draining: this host is leaving the balancer ({after}); {counts}, still serving")
    if ready == 0:
        return Verdict(503, f"unavailable: no ready worker; {counts}")
    if ready < len(p.slots):
        return Verdict(200, f"degraded: {counts}")
    roll = f", reloading to generation {p.roll.generation}" if p.roll is not None else ""
    return Verdict(200, f"ok: {counts}{roll}")


def take_listener(found: list[listeners.Listener]) -> tuple[listeners.Listener | None, list[listeners.Listener]]:
    """Split off the socket named ``health`` (it must never reach a worker); the rest serve the app."""
    health = [lst for lst in found if lst.name == NAME]
    rest = [lst for lst in found if lst.name != NAME]
    for extra in health[1:]:
        extra.close()
    return (health[0] if health else None), rest


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""


class HealthServer:
    """Answers health checks on one listening socket, driven by the primary's selector.

    ``judge()`` is called for each check and returns the :class:`Verdict` to answer with.
    """

    def __init__(self, selector: selectors.BaseSelector, judge: Callable[[], Verdict],
                 listener: listeners.Listener | None = None, bind: str | None = None) -> None:
        self.selector = selector
        self.judge = judge
        self.listener = listener
        self.bind = bind
        self.connections: dict[int, _Connection] = {}  # fd -> connection, oldest first
        self.answered = 0

    @property
    def enabled(self) -> bool:
        return self.listener is not None or bool(self.bind)

    @property
    def address(self) -> str | None:
        return None if self.listener is None else self.listener.address

    def open(self) -> None:
        """Bind ``health_bind`` (unless a socket named health was passed) and start accepting.

        Raises :class:`corepool.listeners.ListenerError` when the address cannot be bound.
        """
        if self.listener is None and self.bind:
            self.listener = listeners.bind(self.bind, BACKLOG)
        if self.listener is None:
            return
        sock = self.listener.sock
        sock.set_inheritable(False)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, self._accept)

    def fds(self) -> list[int]:
        """Descriptors a forked child must close."""
        fds = [c.sock.fileno() for c in self.connections.values()]
        if self.listener is not None:
            fds.append(self.listener.sock.fileno())
        return [fd for fd in fds if fd >= 0]

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._drop(conn)
        if self.listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener.sock)
            self.listener.close()

    def _accept(self, _mask: int) -> None:
        assert self.listener is not None
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _ = self.listener.sock.accept()
            except OSError:  # nothing more to accept, or out of descriptors: the balancer checks again soon
                return
            sock.setblocking(False)
            while len(self.connections) >= MAX_CONNECTIONS:
                self._drop(next(iter(self.connections.values())))
            conn = _Connection(sock)
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, lambda mask, c=conn: self._ready(c, mask))

    def _ready(self, conn: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
            return
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if conn.outbox:
            return  # bytes after the request: ignored, the connection closes after the answer
        conn.inbox += data
        head, sep, _ = conn.inbox.partition(b"\r\n\r\n")
        if not sep:
            head, sep, _ = conn.inbox.partition(b"\n\n")  # bare LF (a check written by hand with nc or printf)
        if not sep:
            if len(conn.inbox) > MAX_REQUEST_BYTES:
                self._answer(conn, 431, "request header too large")
            return
        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._answer(conn, 400, "bad request")
            return
        if parts[0] not in (b"GET", b"HEAD"):
            self._answer(conn, 405, "only GET and HEAD", extra=b"Allow: GET, HEAD\r\n")
            return
        v = self.judge()
        self.answered += 1
        self._answer(conn, v.code, v.reason, head_only=parts[0] == b"HEAD")

    def _answer(self, conn: _Connection, code: int, text: str, head_only: bool = False, extra: bytes = b"") -> None:
        body = text.encode() + b"\n"
        conn.outbox = (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
                       b"Cache-Control: no-store\r\nConnection: close\r\n%s\r\n"
                       % (code, _REASONS[code], len(body), extra)) + (b"" if head_only else body)
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox, socket.MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        conn.outbox = conn.outbox[sent:]
        if not conn.outbox:
            self._drop(conn)
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                 lambda mask, c=conn: self._ready(c, mask))

    def _drop(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self.connections.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)  # a FIN after the answer, not an RST
        conn.sock.close()
