"""HTTP/1.1 on the worker's event loop: corepool's own protocol on httptools (llhttp), for ASGI apps and the WSGI
bridge, with the front line built in rather than wrapped around it.

A request costs what it must and no more. Per connection, not per request: whether the peer is a trusted proxy,
and one deadline (a float the route's :class:`~corepool.engines.site.Site` sweeps, instead of a timer armed and
cancelled per request). Per request: the head's checks (:mod:`corepool.engines.requestcheck`), the scope, one
:class:`Exchange` that is the ASGI ``receive``/``send`` pair, the request's clock and counts
(:class:`~corepool.engines.stats.RequestStats`, no middleware closure), and one write for the whole response
when the app sends its head and body in one go (the head waits for the body, at most until the loop's next turn).

The front line (each limit a setting, see README):

* ``max_header_bytes`` (the whole head, counted as it arrives), ``max_request_line_bytes`` (414),
  ``max_header_line_bytes`` and ``max_headers`` (431); RFC 9112's MUSTs (requestcheck); trailers read, bounded
  and dropped, never request headers.
* ``header_timeout`` (a first head, or any head once its first byte came: 408), ``body_timeout`` (a body silent
  while its app waits: closed, the app sees ``http.disconnect``), ``keepalive_timeout`` (an idle connection).
* ``max_body_bytes`` (413), ``max_connections`` per worker (503 to the first request).
* Every refusal is its status and ``Connection: close``, then a lingering close (FIN, and what the client still
  sends is dropped for :data:`LINGER_SECONDS` or :data:`LINGER_BYTES` at most, as nginx's ``lingering_close``)
  so the answer is not lost to a reset; one short log line, at most one a second per worker (the others counted).
* A client that half-closes gets the answers to the requests it sent whole; a pipelined request refused behind
  an earlier one waits for that answer.
* ``request_timeout`` counts the app's time: an ASGI app's waits for its body pause its request's clock (the WSGI
  bridge pauses its own).

The drain (reload, recycle, stop): an idle keep-alive connection is kept for ``keepalive_timeout`` from the start
of the drain (a request the client sends meanwhile is answered with ``Connection: close``), then closed; a
request in flight is answered with ``Connection: close``. WebSockets are handed to uvicorn's protocols
(:mod:`corepool.engines.websocket`).
"""

from __future__ import annotations

import asyncio
import collections
import http
import math
import os
import re
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

from corepool import log
from corepool.engines.call import AppCall, start
from corepool.engines.requestcheck import Reject, check_head, origin_form
from corepool.engines.site import Site
from corepool.engines.writeflow import WriteFlow

LINGER_SECONDS = 5.0  # after a refusal, how long what the client still sends is read and discarded...
LINGER_BYTES = 64 * 1024 * 1024  # ... and how much of it at most (5 s of a 100 Mbit/s client)
HIGH_WATER = 64 * 1024  # request body bytes buffered before reading pauses until the app takes them
_SENDFILE_BLOCK = 1024 * 1024  # bytes a sendfile(2) call (or a read under TLS) moves at most
# ASGI extensions every request's scope offers (read-only: one dict for all of them).
EXTENSIONS: dict[str, dict[str, Any]] = {"http.response.pathsend": {}, "http.response.zerocopysend": {}}
_LINE_OVERHEAD = 12  # a request line beyond its method and target: two spaces, "HTTP/1.1", CRLF
_HEADER_OVERHEAD = 4  # a header line beyond its name and value: ": " and CRLF
_METHOD = re.compile(rb"[A-Z]+ ")  # a method llhttp does not know but that is a method: 501, not 400
_NO_BODY = frozenset({204, 304})

STATUS_LINES: dict[int, bytes] = {
    int(code): b"HTTP/1.1 %d %s\r\n" % (code, code.phrase.encode()) for code in http.HTTPStatus
}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# Response header lines by (name, value) as the app gives them: checked once, then looked up. Bounded, since the
# values (a Content-Length, a cookie) vary. The kind says what the line means for framing.
_PLAIN, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3
_LINES: dict[tuple[bytes, bytes], tuple[bytes, int]] = {}
_LINES_MAX = 4096


class BadRequestLog:
    """One short line per refused request, at most one per ``interval`` seconds; the others are counted and the
    count is said when the interval ends (so a flood writes two lines a second, not one per request)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.quiet_until = 0.0
        self.suppressed = 0
        self.last = ""
        self.flush: asyncio.TimerHandle | None = None

    def refused(self, loop: asyncio.AbstractEventLoop, peer: str, status: int, reason: str) -> None:
        now = loop.time()
        if now >= self.quiet_until:
            self.quiet_until = now + self.interval
            log.event("bad_request", f"refused a request from {peer}: {status} {reason}", status=status)
            return
        self.suppressed += 1
        self.last = f"{status} {reason}"
        if self.flush is None:
            self.flush = loop.call_at(self.quiet_until, self._say_count)

    def _say_count(self) -> None:
        self.flush = None
        count, self.suppressed = self.suppressed, 0
        log.event("bad_request", f"refused {count} more request{'s' if count != 1 else ''} in the last "
                  f"{self.interval:g} s (the last: {self.last})")


BAD_REQUESTS = BadRequestLog()


def _header_line(name: bytes, value: bytes) -> tuple[bytes, int]:
    """A response header as its line and kind; a name or value that would break the response is the app's bug."""
    entry = _LINES.get((name, value))
    if entry is not None:
        return entry
    if _TOKEN.fullmatch(name) is None:
        raise RuntimeError(f"invalid HTTP header name {name!r}")
    if _BAD_VALUE.search(value):
        raise RuntimeError(f"invalid HTTP header value for {name!r}")
    lower = name.lower()
    kind = _PLAIN
    if lower == b"content-length":
        kind = _LENGTH
    elif lower == b"transfer-encoding" and value.lower() == b"chunked":
        kind = _CHUNKED
    elif lower == b"connection" and b"close" in (t.strip() for t in value.lower().split(b",")):
        kind = _CLOSE
    entry = (lower + b": " + value + b"\r\n", kind)
    if len(_LINES) < _LINES_MAX:
        _LINES[(name, value)] = entry
    return entry


class Exchange(AppCall):
    """One HTTP/1.1 request and its response (the protocol-neutral part: :class:`~corepool.engines.call.AppCall`)."""

    __slots__ = ("chunked", "conn", "expect_100", "head", "keep_alive", "length")

    def __init__(self, conn: HTTP11Protocol, scope: dict[str, Any], keep_alive: bool, expect_100: bool) -> None:
        super().__init__(conn.site, conn.loop, scope)
        self.conn, self.keep_alive, self.expect_100 = conn, keep_alive, expect_100
        self.head = b""  # the response head, until its body goes out with it
        self.length: int | None = None  # the response's Content-Length left to send; None: chunked or unframed
        self.chunked = False

    def _failed(self) -> None:
        if self.disconnected:
            return
        if self.started:
            self.conn.transport.close()
            return
        self.keep_alive = False
        self.status = 500
        self.started = self.complete = True
        self.conn.write(STATUS_LINES[500] + self.site.default_head() + b"content-type: text/plain; "
                        b"charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\nInternal Server Error")
        self.conn.response_done(self)

    def _abort(self) -> None:
        self.conn.transport.close()

    async def _room(self) -> None:
        if self.conn.write_paused and not self.disconnected:
            await self.conn.drain()

    def _want_body(self) -> None:
        if self.expect_100:
            self.expect_100 = False
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.conn.resume_reading()

    def _taken(self, size: int) -> None:
        self.conn.resume_reading()

    async def _zerocopysend(self, file: Any, offset: int | None, count: int | None, more: bool) -> None:
        """ASGI's ``http.response.zerocopysend``: ``count`` bytes (None: to its end) of an open file from
        ``offset`` (None: where it is), sent by the kernel (``sendfile``) where the socket allows, else read."""
        fd = file.fileno()
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if count is None:
            count = os.fstat(fd).st_size - offset
        if self.length is not None:
            if count > self.length:
                raise RuntimeError("response content longer than Content-Length")
            self.length -= count
        conn = self.conn
        if self.head:
            head, self.head = self.head, b""
            conn.write(head)
        if self.scope["method"] != "HEAD" and self.status not in _NO_BODY and count:
            if self.chunked:
                conn.write(b"%x\r\n" % count)
            sent = await conn.send_file(fd, offset, count)
            if sent < count:  # the client left, or the file is shorter than it said: the response cannot end well
                self.disconnected = True
                conn.transport.close()
                return
            if self.chunked:
                conn.write(b"\r\n")
        self.sent += count
        if not more:
            self._body(b"", False)

    def _start(self, message: dict[str, Any]) -> None:
        status = message["status"]
        headers = message.get("headers", ())
        parts = [STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status, self.site.default_head()]
        chunked = close = False
        lines = _LINES
        for name, value in headers:
            line, kind = lines.get((name, value)) or _header_line(name, value)
            parts.append(line)
            if kind == _LENGTH:
                self.length = int(value)
            elif kind == _CHUNKED:
                chunked = True
            elif kind == _CLOSE:
                close = True
        self.expect_100 = False
        if self.length is None and not chunked and self.scope["method"] != "HEAD" and status not in _NO_BODY:
            if self.scope["http_version"] == "1.1":
                parts.append(b"transfer-encoding: chunked\r\n")
                chunked = True
            else:
                self.keep_alive = False  # HTTP/1.0 knows no chunks: the body ends where the connection does
        if chunked:
            self.length = None
            self.chunked = True
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        self.site.hold(self, self.loop)  # the head goes out with the first body, or at the loop's next turn

    def _body(self, body: bytes, more: bool) -> None:
        if self.scope["method"] == "HEAD" or self.status in _NO_BODY:
            data = b""
        elif self.chunked:
            if body:
                data = b"%x\r\n%s\r\n" % (len(body), body) if more else b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            else:
                data = b"" if more else b"0\r\n\r\n"
        elif self.length is None:  # HTTP/1.0 without a Content-Length: the body ends with the connection
            data = body
        else:
            if len(body) > self.length:
                raise RuntimeError("response content longer than Content-Length")
            self.length -= len(body)
            data = body
        head = self.head
        if head:
            self.head = b""
            if len(data) < 16384:
                self.conn.write(head + data)  # one write, one syscall: copying a small body is cheaper
            else:
                self.conn.write(head, data)
        elif data:
            self.conn.write(data)
        if not more:
            if self.length and self.scope["method"] != "HEAD":
                raise RuntimeError("response content shorter than Content-Length")
            self.complete = True
            self.wake()
            self.conn.response_done(self)

    def flush_head(self) -> None:
        """The app sent its response head and no body yet, and the loop turned: the head goes out alone."""
        if self.head and not self.disconnected:
            head, self.head = self.head, b""
            self.conn.write(head)




class HTTP11Protocol(WriteFlow):
    """One HTTP/1.1 connection (see the module docstring)."""

    def __init__(self, site: Site, loop: asyncio.AbstractEventLoop) -> None:
        self.site, self.loop, self.options = site, loop, site.options
        self.parser = httptools.HttpRequestParser(self)
        # The answer to a request before a pipelined one with Connection: close still goes out.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.trusted = False  # the peer is a trusted proxy: its X-Forwarded-* count
        self.running: Exchange | None = None  # the request being answered
        self.current: Exchange | None = None  # the newest request (its body is what arrives now)
        self.pipeline: collections.deque[Exchange] = collections.deque()  # requests waiting for their turn
        self.deadline = math.inf
        self.deadline_kind = ""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.fields = self.head_size = self.body_bytes = self.lingered = 0
        self.length: bytes | None = None
        self.chunked = False  # the request's body is chunked
        self.expect_100 = False
        self.forwarded: list[bytes] = []
        self.proto: bytes | None = None
        self.in_head = True  # reading a request head (or waiting for one)
        self.head_started = False  # some of a request head has arrived
        self.head_has_exchange = False  # the request whose head is being parsed has its Exchange (or no head is)
        self.reading_body = False
        self.in_trailers = False  # the fields llhttp reports now follow a chunked body
        self.upgrading = False  # the head asks for a WebSocket this route serves
        self.draining = self.lingering = self.over_limit = False
        self.read_paused = self.write_paused = False
        self.refusal: Reject | None = None  # a pipelined head refused, answered once the earlier answers are out
        self.starting: Exchange | None = None  # a request whose app is called once the current read is parsed
        self.first = True  # no byte came yet: an HTTP/2 preface may
        self._drained: asyncio.Future[None] | None = None

    # The connection.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        site = self.site
        if site.options.http2 and is_ssl(transport):
            tls = transport.get_extra_info("ssl_object")
            if tls is not None and tls.selected_alpn_protocol() == "h2":
                self._become_h2(b"")
                return
        site.connections.add(self)
        self.client = get_remote_addr(transport)
        self.server = get_local_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.trusted = site.trust is not None and site.trust.peer_trusted(self.client)
        balancer = site.balancer
        if balancer is not None:
            balancer.publish()
            self.over_limit = balancer.open_connections() > self.options.max_connections
        else:
            self.over_limit = len(site.connections) > self.options.max_connections
        self._expect("head", self.options.header_timeout)
        site.watch(self, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        site = self.site
        site.connections.discard(self)
        site.forget(self)
        if site.balancer is not None:
            site.balancer.publish()
        for exchange in (self.running, self.current, *self.pipeline):
            if exchange is not None:
                exchange.gone()
        self._release_writers()
        self.parser = None  # type: ignore[assignment]

    def eof_received(self) -> bool | None:
        """The client sent FIN (``shutdown(SHUT_WR)``, ``nc -N``): it sends no more, but may still read. Requests
        it sent whole are answered, then the connection closes; one cut short is not (its app sees a
        disconnect)."""
        if self.refusal is not None:
            return True  # the earlier answers, then the refusal, still go out
        if self.lingering or (self.in_head and self.head_started) or self.reading_body:
            return None  # a request cut short (or a refusal's lingering close, which ends here)
        last = self.pipeline[-1] if self.pipeline else self.running
        if last is None or last.complete:
            return None  # idle: close now
        last.keep_alive = False
        return True

    def data_received(self, data: bytes) -> None:
        if self.first:
            self.first = False
            if data[:3] == b"PRI" and self.site.options.http2:
                self._become_h2(data)  # h2c with prior knowledge: the HTTP/2 preface instead of a request
                return
        if self.lingering or self.refusal is not None:
            self.lingered += len(data)  # dropped: the answer is on its way, the connection closes soon (_linger)
            if self.lingered > LINGER_BYTES:
                self.transport.close()
            return
        if self.in_head:
            # Counted as it arrives (this may include body bytes: the exact check is in _check), so a huge head
            # is refused after at most one read beyond the limit.
            self.head_size += len(data)
        try:
            self._parse(data)
        finally:
            # A request whose head came in this read: its app is called now that the read is parsed (not from a
            # parser callback), unless the read's rest refused it (a body too large, bad chunks): then never.
            starting = self.starting
            if starting is not None:
                self.starting = None
                if not starting.disconnected:
                    self._start(starting)

    def _parse(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if not isinstance(reject, Reject):  # a bug of ours on a request nobody foresaw: still one line
                reject = Reject(400, f"Bad Request ({type(reject).__name__} in the parser callback)")
            self._reject(reject)
            return
        except httptools.HttpParserInvalidMethodError:
            known = _METHOD.match(data.lstrip(b"\r\n")) is not None
            self._reject(Reject(501, "Not Implemented: unknown method") if known else
                         Reject(400, "Bad Request: invalid method"))
            return
        except httptools.HttpParserUpgrade:
            self._upgraded()
            return
        except httptools.HttpParserError as exc:
            if self.parser.get_http_version()[:1] not in ("0", "1"):  # HTTP/2.0, HTTP/3.0, an h2 preface
                self._reject(Reject(505, "HTTP Version Not Supported"))
            else:
                self._reject(Reject(400, f"Bad Request: {exc}"))
            return
        if self.in_head and self.head_size > self.options.max_header_bytes:
            self._reject(Reject(431, "Request Header Fields Too Large"))

    # Parser callbacks.

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.fields = self.body_bytes = 0
        self.length, self.proto, self.expect_100, self.chunked = None, None, False, False
        self.forwarded = []
        self.in_trailers = self.head_has_exchange = self.upgrading = False
        if not self.in_head:
            self.in_head, self.head_size = True, 0
        self.head_started = True
        if self.deadline_kind != "head":
            self._expect("head", self.options.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.options.max_request_line_bytes:
            raise Reject(414, "URI Too Long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if self.fields > self.options.max_headers:
            raise Reject(431, "Request Header Fields Too Large: too many fields")
        if len(name) + len(value) + _HEADER_OVERHEAD > self.options.max_header_line_bytes:
            raise Reject(431, "Request Header Fields Too Large: a field is too long")
        if self.in_trailers:
            # A trailer: bounded by the limits above, then dropped; never a request header. A proxy in front
            # checks headers, not trailers: a trailer that became a header would smuggle it past the proxy.
            return
        name = name.lower()
        value = value.rstrip(b" \t")  # RFC 9110 §5.5: not part of the value (llhttp keeps it)
        if name == b"content-length":
            self.length = value
        elif name == b"transfer-encoding":
            self.chunked = True  # requestcheck refuses any other coding
        elif name == b"expect":
            self.expect_100 = value.lower() == b"100-continue"
        elif self.trusted and name[:12] == b"x-forwarded-":
            if name == b"x-forwarded-for":
                self.forwarded.append(value)
            elif name == b"x-forwarded-proto":
                self.proto = value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = self.head_started = False
        self.in_trailers = True
        self.fields = 0
        parser = self.parser
        method = parser.get_method()
        version = parser.get_http_version()
        self._check(method, version)
        if parser.should_upgrade() and self._wants_websocket():
            self.upgrading = True  # handed over in data_received
            return
        scope = self._scope(method.decode("ascii"), version)
        # HTTP/1.0 connections close after their answer, as uvicorn's do; an upgrade other than a WebSocket too.
        keep_alive = version == "1.1" and parser.should_keep_alive() and not self.draining
        keep_alive = keep_alive and not parser.should_upgrade()
        exchange = self.current = Exchange(self, scope, keep_alive, self.expect_100)
        self.head_has_exchange = True
        self.reading_body = True  # until on_message_complete (at once for a request without a body)
        if self.chunked or (self.length is not None and self.length != b"0"):
            self._expect("body", self.options.body_timeout)
        if self.running is None:
            self.running = self.starting = exchange  # its app is called once this read is parsed
        else:
            self.pipeline.append(exchange)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        self.body_bytes += len(body)
        limit = self.options.max_body_bytes
        if limit and self.body_bytes > limit:
            raise Reject(413, "Content Too Large")
        if exchange is None or exchange.complete or exchange.disconnected:
            return
        exchange.arrived(body, True)
        if len(exchange.body) > HIGH_WATER:
            self.pause_reading()
        self._expect("body", self.options.body_timeout)

    def on_message_complete(self) -> None:
        self.reading_body = False
        if self.deadline_kind == "body":
            self._expect("", 0)  # the app's time now: request_timeout's, not a client timeout's
        exchange = self.current
        if exchange is not None and not self.upgrading:
            exchange.arrived(b"", False)

    # The request.

    def _check(self, method: bytes, version: str) -> None:
        """RFC 9112's checks, the head's exact size, its Content-Length, this connection's rank."""
        authority = check_head(method, self.url, version, self.headers)
        if authority is not None:  # an absolute target: its authority is the Host (RFC 9112 §3.2.2)
            self.url = origin_form(self.url)
            self.headers[:] = [(n, authority if n == b"host" else v) for n, v in self.headers]
            if not any(n == b"host" for n, _ in self.headers):
                self.headers.append((b"host", authority))
        size = len(self.url) + len(method) + _LINE_OVERHEAD
        for name, value in self.headers:
            size += len(name) + len(value) + _HEADER_OVERHEAD
        if size > self.options.max_header_bytes:
            raise Reject(431, "Request Header Fields Too Large")
        if self.over_limit:
            raise Reject(503, "Service Unavailable")
        limit = self.options.max_body_bytes
        if limit and self.length is not None and int(self.length) > limit:  # llhttp checked: digits only
            raise Reject(413, "Content Too Large")

    def _scope(self, method: str, version: str) -> dict[str, Any]:
        site = self.site
        raw, _, query = self.url.partition(b"?")
        path = raw.decode("ascii")  # llhttp refuses a target that is not ASCII
        if b"%" in raw:
            path = unquote(path)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method,
            "root_path": site.root_path,
            "path": site.root_path + path,
            "raw_path": site.root_path_bytes + raw,
            "query_string": query,
            "headers": self.headers,
            "state": site.app_state.copy(),
            "extensions": EXTENSIONS,
        }
        if self.trusted and (self.forwarded or self.proto is not None):
            assert site.trust is not None
            site.trust.apply(scope, self.proto, self.forwarded)
        return scope

    def _start(self, exchange: Exchange) -> None:
        self.running = exchange
        start(exchange)

    def response_done(self, exchange: Exchange) -> None:
        """``exchange``'s response is complete: the next pipelined request, or a keep-alive wait, or the close."""
        if self.transport.is_closing():
            return
        if not exchange.keep_alive:
            self.transport.close()
            return
        self.running = None
        self.resume_reading()
        if self.pipeline:
            self._start(self.pipeline.popleft())
        elif self.refusal is not None:
            refusal, self.refusal = self.refusal, None
            self._answer_and_close(refusal.status, refusal.reason)
        elif not self.reading_body and not self.head_started:
            self._expect("idle", self.options.keepalive_timeout)

    def _wants_websocket(self) -> bool:
        if self.site.upgrade is None:
            return False
        connection = upgrade = b""
        for name, value in self.headers:
            if name == b"connection":
                connection = value.lower()
            elif name == b"upgrade":
                upgrade = value.lower()
        return upgrade == b"websocket" and b"upgrade" in (t.strip() for t in connection.split(b","))

    def _upgraded(self) -> None:
        """llhttp stopped at an upgrade: a WebSocket is handed to its protocol; any other upgrade (h2c, say) is
        served as HTTP/1.1, which a server may do (RFC 9110 §7.8), and the connection closes after it."""
        if not self.upgrading:
            if self.current is not None:
                self.current.keep_alive = False
            return
        assert self.site.upgrade is not None
        self.site.connections.discard(self)
        self.site.forget(self)
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        websocket: Any = self.site.upgrade(self.transport)
        websocket.connection_made(self.transport)
        self.transport.set_protocol(websocket)
        websocket.data_received(b"".join(head))
        if self.draining:
            websocket.shutdown()  # the drain's passes are over: it goes away like the worker's other WebSockets

    def _become_h2(self, data: bytes) -> None:
        """Hand the connection to HTTP/2 (ALPN h2, or the preface of h2c with prior knowledge)."""
        from corepool.engines.http2 import H2Protocol

        self.site.connections.discard(self)
        self.site.forget(self)
        h2 = H2Protocol(self.site, self.loop)
        self.transport.set_protocol(h2)
        h2.connection_made(self.transport)
        if data:
            h2.data_received(data)

    # Writing, and flow control.

    async def send_file(self, fd: int, offset: int, count: int) -> int:
        """Send ``count`` bytes of file ``fd`` from ``offset`` after what is already written; the bytes sent.
        ``sendfile(2)`` on a plain TCP or unix socket (the file's pages go to the socket without passing through
        Python); under TLS, the file read and written in blocks, with back-pressure."""
        sock = self.transport.get_extra_info("socket")
        if is_ssl(self.transport) or sock is None:
            return await self._copy_file(fd, offset, count)
        await self._flushed()
        out = os.dup(sock.fileno())  # a second descriptor of the socket, to wait for room on outside the transport
        sent = 0
        try:
            while sent < count and not self.transport.is_closing():
                try:
                    n = os.sendfile(out, fd, offset + sent, min(count - sent, _SENDFILE_BLOCK))
                except BlockingIOError:
                    await self._writable(out)
                    continue
                except OSError:
                    return sent  # the client left (EPIPE, ECONNRESET)
                if n == 0:
                    return sent  # the file ended early
                sent += n
        finally:
            os.close(out)
        return sent

    async def _copy_file(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count and not self.transport.is_closing():
            block = os.pread(fd, min(count - sent, _SENDFILE_BLOCK), offset + sent)
            if not block:
                break
            self.transport.write(block)
            sent += len(block)
            if self.write_paused:
                await self.drain()
        return sent

    async def _flushed(self) -> None:
        """Until everything written to the transport is with the kernel: file bytes must come after it."""
        if self.transport.get_write_buffer_size():
            self.transport.set_write_buffer_limits(high=0)  # pause_writing now, resume_writing once empty
            try:
                while self.transport.get_write_buffer_size() and not self.transport.is_closing():
                    self.write_paused = True
                    await self.drain()
            finally:
                self.transport.set_write_buffer_limits()

    async def _writable(self, fd: int) -> None:
        waiter: asyncio.Future[None] = self.loop.create_future()

        def room() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self.loop.add_writer(fd, room)
        try:
            await waiter
        finally:
            self.loop.remove_writer(fd)

    def write(self, data: bytes, more: bytes = b"") -> None:
        if more:
            self.transport.writelines([data, more])
        else:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # Deadlines (Site sweeps them).

    def _expect(self, kind: str, seconds: float) -> None:
        """The connection's one deadline: ``kind`` ("head", "body", "idle", "linger"; "" none) in ``seconds``."""
        self.deadline_kind = kind
        self.deadline = self.loop.time() + seconds if kind and seconds > 0 else math.inf

    def timed_out(self, now: float) -> None:
        kind = self.deadline_kind
        self._expect("", 0)
        if kind == "head":
            if self.running is None:
                self._answer_and_close(408, "Request Timeout")
            else:  # a pipelined head while a response is still being written: no room for a 408
                self.transport.close()
        elif kind == "body" and self.read_paused:
            self._expect("body", self.options.body_timeout)  # we stopped reading (the app is slow), not the client
        else:  # a silent body (the app sees a disconnect), an idle keep-alive connection, the end of a linger
            self.transport.close()

    # The drain.

    def shutdown(self) -> None:
        """Start this connection's drain (called at once when the worker drains, and again by uvicorn)."""
        if self.draining:
            return
        self.draining = True
        last = self.pipeline[-1] if self.pipeline else self.running
        if last is not None and not last.complete:
            last.keep_alive = False
        elif not self.head_started and not self.reading_body:
            # Idle: it may still carry one request (answered with Connection: close) for keepalive_timeout from
            # now, then it is closed, so a drain never waits graceful_timeout for an idle connection.
            self._expect("idle", self.options.keepalive_timeout)

    # Refusals.

    def _reject(self, reject: Reject) -> None:
        exchange = self.current if self.head_has_exchange else None  # None: the refused head has no Exchange
        if not self.head_has_exchange and self.running is not None and not self.running.complete:
            # A pipelined head is refused while an earlier request is still being answered: that answer (and any
            # queued before the refused head) goes out first, then the refusal (response_done).
            self.refusal = reject
            return
        if exchange is not None and not exchange.complete:
            exchange.gone()  # the app is running (its body went wrong): it sees a disconnect, its answer is dropped
            if exchange.started:
                self.transport.close()
                return
        self._answer_and_close(reject.status, reject.reason)

    def _answer_and_close(self, status: int, message: str) -> None:
        if self.transport.is_closing() or self.lingering:
            return
        if status >= 400:
            BAD_REQUESTS.refused(self.loop, self.client[0] if self.client else "a unix socket peer", status, message)
        body = message.encode("ascii")
        self.transport.write(b"".join([
            STATUS_LINES[status], self.site.default_head(), b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body,
        ]))  # fmt: skip
        self._linger()

    def _linger(self) -> None:
        """Close without losing the answer to a reset: closing a socket with unread input makes the kernel send
        RST, and a client still sending then never reads the answer. So stop parsing, send FIN after the answer,
        and read and discard what the client still sends until it closes, for :data:`LINGER_SECONDS` or
        :data:`LINGER_BYTES` at most."""
        self.lingering = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.resume_reading()
        self._expect("linger", LINGER_SECONDS)
