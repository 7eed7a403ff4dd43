"""A socket the primary answers itself (metrics, health): a tiny non-blocking HTTP/1.x responder on its loop.

``GET`` and ``HEAD`` only, one answer per connection (``Connection: close``, then a FIN), a bounded number of
connections (the oldest is dropped beyond ``max_connections``), request heads bounded to
:data:`MAX_REQUEST_BYTES`; nothing in it ever blocks. What to answer is the subclass's: :meth:`Endpoint.request`
gets the path and a ``respond`` callable it may call at once or later (a scrape waits for fresh pongs).

The socket is a listener named after the endpoint (systemd's ``FileDescriptorName=``, or ``--bind NAME=ADDR``)
or the endpoint's own ``*_bind`` address; :func:`take_listener` keeps it away from the app's workers.
"""

from __future__ import annotations

import contextlib
import http
import selectors
import socket
from collections.abc import Callable

from corepool import listeners

MAX_REQUEST_BYTES = 8192
TEXT = b"text/plain; charset=utf-8"

Respond = Callable[[int, bytes, bytes], None]
"""``respond(status, body, content_type)``: answer the request (a second call is ignored)."""


def take_listener(found: list[listeners.Listener], name: str) -> tuple[listeners.Listener | None,
                                                                         list[listeners.Listener]]:
    """Split off the socket named ``name`` (it must never reach a worker); the rest serve the app."""
    mine = [lst for lst in found if lst.name == name]
    rest = [lst for lst in found if lst.name != name]
    for extra in mine[1:]:
        extra.close()
    return (mine[0] if mine else None), rest


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.asked = False  # a whole request was read: its answer is being prepared or sent


class Endpoint:
    """One listening socket answered in the primary's ``selectors`` loop; subclasses say what to answer."""

    max_connections = 8
    backlog = 16

    def __init__(self, selector: selectors.BaseSelector, listener: listeners.Listener | None = None,
                 bind: str | None = None) -> None:
        self.selector = selector
        self.listener = listener
        self.bind = bind
        self.connections: dict[int, _Connection] = {}  # fd -> connection, oldest first

    def request(self, path: bytes, respond: Respond) -> None:
        """Answer a GET (or HEAD: the body is dropped for it) of ``path``."""
        raise NotImplementedError

    @property
    def enabled(self) -> bool:
        return self.listener is not None or bool(self.bind)

    @property
    def address(self) -> str | None:
        return None if self.listener is None else self.listener.address

    def open(self) -> None:
        """Bind the ``*_bind`` address (unless a socket was passed) and start accepting.

        Raises :class:`corepool.listeners.ListenerError` when the address cannot be bound.
        """
        if self.listener is None and self.bind:
            self.listener = listeners.bind(self.bind, self.backlog)
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
        for _ in range(self.max_connections):
            try:
                sock, _ = self.listener.sock.accept()
            except OSError:  # nothing more to accept, or out of descriptors: the client asks again soon
                return
            sock.setblocking(False)
            while len(self.connections) >= self.max_connections:
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
        if conn.asked:
            return  # bytes after the request: ignored, the connection closes after the answer
        conn.inbox += data
        head, sep, _ = conn.inbox.partition(b"\r\n\r\n")
        if not sep:
            head, sep, _ = conn.inbox.partition(b"\n\n")  # bare LF (a check written by hand with nc or printf)
        if not sep:
            if len(conn.inbox) > MAX_REQUEST_BYTES:
                self._answer(conn, 431, b"request header too large\n")
            return
        conn.asked = True
        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._answer(conn, 400, b"bad request\n")
            return
        method, path = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self._answer(conn, 405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n")
            return
        head_only = method == b"HEAD"

        def respond(code: int, body: bytes, content_type: bytes = TEXT) -> None:
            self._answer(conn, code, body, content_type, head_only)

        self.request(path, respond)

    def _answer(self, conn: _Connection, code: int, body: bytes, content_type: bytes = TEXT,
                head_only: bool = False, extra: bytes = b"") -> None:
        if conn.sock.fileno() not in self.connections or conn.outbox:
            return  # closed meanwhile, or already answered
        conn.asked = True
        phrase = http.HTTPStatus(code).phrase.encode()
        conn.outbox = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
                       b"Connection: close\r\n%s\r\n" % (code, phrase, content_type, len(body), extra)
                       ) + (b"" if head_only else body)
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
