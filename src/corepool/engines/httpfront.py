"""The HTTP front line: uvicorn's httptools protocol with the limits and timeouts that protect a worker.

Everything here happens on the event loop, before (or beside) the app, so a slow or hostile client costs a
connection and never an app thread (for WSGI routes) nor the loop's time:

* ``max_header_bytes``: the request head is counted as it arrives, chunk by chunk, so a huge header is refused
  (431, then close) after at most one read beyond the limit, not once it is whole.
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

And the drain: an idle keep-alive connection is kept for ``keepalive_timeout`` after the drain starts (a request
the client is sending at that moment is answered, with ``Connection: close``), then closed, so a stop or a
reload never waits ``graceful_timeout`` for an idle connection.
"""

from __future__ import annotations

import asyncio
import http
import inspect
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from corepool.settings import HttpOptions

if TYPE_CHECKING:
    from corepool.engines.asgi import Balancer

# Request line overhead beyond the URL and method: " HTTP/1.1\r\n" plus a space; per header ": " and "\r\n".
_LINE_OVERHEAD = 12
_HEADER_OVERHEAD = 4


class Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``, then close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status, self.reason = status, reason


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

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.in_head:
            self.head_bytes += len(data)  # may include body bytes: the exact check is in on_headers_complete
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, Reject):
                self._reject(exc.__context__)
                return
            raise
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
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
            else:
                self._unsupported_upgrade_warning()
            return
        if self.in_head and self.head_bytes > self.options.max_header_bytes:
            self._reject(Reject(431, "Request Header Fields Too Large"))
        elif self.reading_body:
            self._arm_body_timer()

    # Parser callbacks.

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_started = True
        if not self.in_head:
            self.in_head, self.head_bytes = True, 0
        if self.head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self.in_head = self.head_started = False
        self._cancel_head_timer()
        self._check_head()
        self.body_bytes = 0
        self.reading_body = True  # until on_message_complete (at once for a request without a body)
        super().on_headers_complete()
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

    def _check_head(self) -> None:
        """The exact size of the head just parsed, its Content-Length and this connection's rank."""
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
        if limit and length is not None and length.strip().isdigit() and int(length) > limit:
            raise Reject(413, "Content Too Large")

    # Answers that end the connection.

    def _reject(self, reject: Reject) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app is running (a chunked body went over the limit): it sees a disconnect, its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self._answer_and_close(reject.status, reject.reason)

    def _answer_and_close(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
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
        self.transport.close()

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
