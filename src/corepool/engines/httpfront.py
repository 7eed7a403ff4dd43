"""The HTTP front line: uvicorn's httptools protocol with the limits and timeouts that protect a worker.

Everything here happens on the event loop, before (or beside) the app, so a slow or hostile client costs a
connection and never an app thread (for WSGI routes) nor the loop's time:

* ``max_header_bytes``: the request head is counted as it arrives, chunk by chunk, so a huge header is refused
  (431, then close) after at most one read beyond the limit, not once it is whole. ``max_request_line_bytes``
  (414), ``max_header_line_bytes`` and ``max_headers`` (431) bound the request line, one header line and the
  number of headers the same way, as they arrive.
* The head is checked against RFC 9112 before the app is called (:mod:`corepool.engines.requestcheck`):
  duplicate or missing ``Host``, targets, versions, ``Transfer-Encoding``. Request trailers (fields after a
  chunked body) are read, counted against the same limits and dropped: they never become request headers.
* ``header_timeout``: a connection's first request head, or any head once its first byte came, must be whole
  within this time (408, then close). Idle keep-alive connections are governed by ``keepalive_timeout``.
* ``body_timeout``: a request body that stays silent this long (while the app is waiting for it) closes the
  connection; the app sees ``http.disconnect``.
* ``max_body_bytes``: a larger ``Content-Length`` gets 413 before the app runs; a chunked body is counted and
  cut off with 413 (or a close, if the app already answered) once over.
* ``max_connections``: a connection beyond this many open in the worker gets 503 to its first request, then close.

For WSGI routes the bridge (:mod:`corepool.engines.wsgi`) gathers a request body on the loop, up to
``BUFFERED_BODY_LIMIT``, before it takes an app thread: a client that sends its body slowly holds a connection,
not a thread.

Every refusal is an answer with its status (400, 414, 431, 501, 505, ...) and ``Connection: close``, followed by a
lingering close (nginx's ``lingering_close``): the connection stops reading requests, sends FIN, and discards what
the client still sends for at most :data:`LINGER_SECONDS` (and :data:`LINGER_BYTES`), so the answer is not lost
to a reset when the client is still sending. Each refusal is at most one short log line, and at most one per
second per worker (the rest are counted in the next line): a flood of bad requests cannot flood the log.

And the drain: an idle keep-alive connection is kept for ``keepalive_timeout`` after the drain starts (a request
the client is sending at that moment is answered, with ``Connection: close``), then closed, so a stop or a
reload never waits ``graceful_timeout`` for an idle connection.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import re
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from corepool import log
from corepool.engines.requestcheck import Reject, check_head, origin_form
from corepool.settings import HttpOptions

if TYPE_CHECKING:
    from corepool.engines.accept import Balancer

# Request line overhead beyond the URL and method: " HTTP/1.1\r\n" plus a space; per header ": " and "\r\n".
_LINE_OVERHEAD = 12
_HEADER_OVERHEAD = 4
LINGER_SECONDS = 5.0  # after a refusal, how long what the client still sends is read and discarded...
LINGER_BYTES = 64 * 1024 * 1024  # ... and how much of it at most (5 s of a 100 Mbit/s client)
_METHOD = re.compile(rb"[A-Z]+ ")  # a method llhttp does not know but that is a method: 501, not 400


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


def _uvicorn_announces_close() -> bool:
    """Whether this uvicorn sends ``Connection: close`` itself when it will close the connection after a response
    (newer ones do; Debian 13's 0.32 closes without saying so, and a client then reuses a closed connection)."""
    try:
        return "has_connection_close" in inspect.getsource(RequestResponseCycle.send)
    except (OSError, TypeError):
        return False


UVICORN_ANNOUNCES_CLOSE = _uvicorn_announces_close()


class ClosingCycle(RequestResponseCycle):
    """uvicorn's request cycle, for a uvicorn that does not announce a close: a response on a connection that will
    close (a draining worker's) carries ``Connection: close``, so the client does not send another request on it."""

    async def send(self, message: Any) -> None:
        if not self.keep_alive and message.get("type") == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(bytes(name).lower() == b"connection" for name, _ in headers):
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await super().send(message)


class FrontLineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with corepool's limits, timeouts and drain (see the module docstring)."""

    options: HttpOptions = HttpOptions()  # set once per worker process, before serving
    balancer: Balancer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self.in_head = True  # reading a request head (or waiting for one)
        self.head_started = False  # some of a request head has arrived
        self.head_bytes = 0
        self.body_bytes = 0
        self.reading_body = False
        self.over_limit = False
        self.fields = 0  # header (or trailer) lines of the current head (or trailer section)
        self.in_trailers = False  # the fields llhttp reports now follow a chunked body
        self.lingering = False  # refused: what the client still sends is discarded (see _linger)
        self.lingered = 0  # bytes discarded so far
        self.head_has_cycle = False  # the request whose head is being parsed has its cycle (or no head is)
        self.refusal: Reject | None = None  # a pipelined head refused, answered once the earlier answers are out
        self.head_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    # Connection life.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.balancer is not None:
            self.balancer.publish()
            self.over_limit = self.balancer.open_connections() > self.options.max_connections
        else:
            self.over_limit = len(self.connections) > self.options.max_connections
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)
        if self.balancer is not None:
            self.balancer.publish()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client sent FIN (``shutdown(SHUT_WR)``, ``nc -N``): it sends no more, but may still read. Requests
        it sent whole are answered, then the connection closes; one cut short is not (its app sees a
        disconnect). uvicorn closed at once, dropping the answers."""
        if self.refusal is not None:
            return True  # the earlier answers, then the refusal, still go out
        if self.lingering or (self.in_head and self.head_started) or self.reading_body:
            return None  # a request cut short (or a refusal's lingering close, which ends here)
        pending = [cycle for cycle, _ in self.pipeline] or ([self.cycle] if self.cycle is not None else [])
        if not pending or pending[0].response_complete:
            return None  # idle: close now
        pending[0].keep_alive = False  # the last request it sent (the pipeline's newest is first): close after it
        return True

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.refusal is not None:
            # Read and dropped: the answer is on its way, the connection closes soon (_linger).
            self.lingered += len(data)
            if self.lingered > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)  # may include body bytes: the exact check is in on_headers_complete
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
        except httptools.HttpParserError as exc:
            if self.parser.get_http_version()[:1] not in ("0", "1"):  # HTTP/2.0, HTTP/3.0, an h2 preface
                self._reject(Reject(505, "HTTP Version Not Supported"))
            else:
                self._reject(Reject(400, f"Bad Request: {exc}"))
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._cancel_head_timer()
                self._cancel_body_timer()
                self.reading_body = False
                self.handle_websocket_upgrade()
                websocket: Any = self.transport.get_protocol()
                if self.draining and websocket is not self:
                    # The drain's passes are over: this one goes away like every other WebSocket of the worker.
                    websocket.shutdown()
            elif self.cycle is not None:
                # Another upgrade (h2c, say), which a server may ignore (RFC 9110 §7.8): the request is served as
                # it is, and the connection closes after it (the parser stops at the upgrade).
                self.cycle.keep_alive = False
            return
        if self.in_head and self.head_bytes > self.options.max_header_bytes:
            self._reject(Reject(431, "Request Header Fields Too Large"))
        elif self.reading_body:
            self._arm_body_timer()

    # Parser callbacks.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_has_cycle = False
        self.fields = 0
        self.in_trailers = False
        self.head_started = True
        if not self.in_head:
            self.in_head, self.head_bytes = True, 0
        if self.head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
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
        # RFC 9110 §5.5: the value excludes trailing white space (llhttp keeps it; older uvicorns too).
        super().on_header(name, value.rstrip(b" \t"))

    def on_headers_complete(self) -> None:
        self.in_head = self.head_started = False
        self.in_trailers = True
        self.fields = 0
        self._cancel_head_timer()
        self._check_head()
        self.body_bytes = 0
        self.reading_body = True  # until on_message_complete (at once for a request without a body)
        super().on_headers_complete()
        self.head_has_cycle = True
        if self.cycle is not None and not UVICORN_ANNOUNCES_CLOSE and type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = ClosingCycle
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        limit = self.options.max_body_bytes
        if limit and self.body_bytes > limit:
            raise Reject(413, "Content Too Large")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading_body = False
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.refusal is not None and not self.pipeline and not self.transport.is_closing():
            refusal, self.refusal = self.refusal, None
            self._answer_and_close(refusal.status, refusal.reason)

    def _check_head(self) -> None:
        """RFC 9112's checks (requestcheck), the exact size of the head just parsed, its Content-Length and this
        connection's rank."""
        authority = check_head(self.parser.get_method(), self.url, self.parser.get_http_version(), self.headers)
        if authority is not None:  # an absolute target: its authority is the Host (RFC 9112 §3.2.2)
            self.url = origin_form(self.url)
            self.headers[:] = [(n, authority if n == b"host" else v) for n, v in self.headers]
            if not any(n == b"host" for n, _ in self.headers):
                self.headers.append((b"host", authority))
        size = len(self.url) + len(self.parser.get_method()) + _LINE_OVERHEAD
        length = None
        for name, value in self.headers:
            size += len(name) + len(value) + _HEADER_OVERHEAD
            if name == b"content-length":
                length = value
        if size > self.options.max_header_bytes:
            raise Reject(431, "Request Header Fields Too Large")
        if self.over_limit:
            raise Reject(503, "Service Unavailable")
        limit = self.options.max_body_bytes
        if limit and length is not None and int(length) > limit:  # llhttp checked: digits only
            raise Reject(413, "Content Too Large")

    # Answers that end the connection.

    def _reject(self, reject: Reject) -> None:
        cycle = self.cycle
        if not self.head_has_cycle and cycle is not None and not cycle.response_complete:
            # A pipelined head is refused while an earlier request is still being answered: that answer (and any
            # queued before the refused head) goes out first, then the refusal (on_response_complete).
            self.refusal = reject
            return
        if cycle is not None and not cycle.response_complete:
            # The app is running (a chunked body went over the limit): it sees a disconnect, its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self._answer_and_close(reject.status, reject.reason)

    def _answer_and_close(self, status: int, message: str) -> None:
        if self.transport.is_closing() or self.lingering:
            return
        if status >= 400:
            BAD_REQUESTS.refused(self.loop, self._peer(), status, message)
        body = message.encode("ascii")
        content = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode("ascii")]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        self._linger()

    def _linger(self) -> None:
        """Close without losing the answer to a reset: closing a socket with unread input makes the kernel send
        RST, and a client still sending then never reads the answer. So stop parsing, send FIN after the answer,
        and read and discard what the client still sends until it closes, for :data:`LINGER_SECONDS` or
        :data:`LINGER_BYTES` at most."""
        self.lingering = True
        self._cancel_head_timer()
        self._cancel_body_timer()
        self._unset_keepalive_if_required()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self.timeout_keep_alive_task = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _peer(self) -> str:
        return self.client[0] if self.client else "a unix socket peer"

    # Timers.

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.options.header_timeout > 0:
            self.head_timer = self.loop.call_later(self.options.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self._answer_and_close(408, "Request Timeout")
        else:  # a pipelined head while a response is still being written: no room for a 408
            self.transport.close()

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        if self.reading_body and self.options.body_timeout > 0:
            self.body_timer = self.loop.call_later(self.options.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _body_timed_out(self) -> None:
        self.body_timer = None
        if self.flow.read_paused:  # we stopped reading (the app is slow), not the client: not its silence
            self._arm_body_timer()
            return
        self.transport.close()  # connection_lost tells the app: http.disconnect

    # The drain.

    def shutdown(self) -> None:
        """Start this connection's drain (called at once when the worker drains, and again by uvicorn)."""
        if self.draining:
            return
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            if self.head_started:
                return  # a request is arriving: answered with Connection: close (on_headers_complete)
            # Idle: it may still carry one request (answered with Connection: close) for keepalive_timeout from
            # now, then it is closed, so a drain never waits graceful_timeout for an idle connection.
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            return
        self.cycle.keep_alive = False
