"""HTTP/2 on the worker's event loop, through python-hyper's h2 (the sans-I/O protocol hypercorn uses too): ALPN
``h2`` over TLS, and ``h2c`` with prior knowledge on cleartext sockets (what a proxy speaking HTTP/2 to its upstream
sends). Each stream is an app call (:class:`~corepool.engines.call.AppCall`): an ASGI HTTP scope with
``http_version`` "2", or a WSGI call through the bridge; counted, clocked and logged like HTTP/1.1's.

Flow control both ways: a stream's body is acknowledged (its window reopened) as the app takes it, and a response
waits for the client's window. Limits like HTTP/1.1's front line: ``h2_max_concurrent_streams``, the header list
(``max_header_bytes``, and ``max_headers`` fields: 431), ``max_body_bytes`` (413), ``keepalive_timeout`` for an
idle connection and ``header_timeout`` for the first request; a client that resets more than
``h2_max_resets_per_second`` streams a second (rapid reset, CVE-2023-44487) and one that floods CONTINUATION frames
(h2 stops at 64 of them) lose their connection (GOAWAY), nobody else's. On a drain every connection gets GOAWAY;
its streams in flight finish, then it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from corepool.engines.call import AppCall, start
from corepool.engines.site import Site
from corepool.engines.writeflow import WriteFlow

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_BLOCK = 256 * 1024  # a file is read in blocks this large (HTTP/2 frames it: no sendfile)
CONTROL_PER_SECOND = 1000  # SETTINGS + PING frames a client may send a second before its connection goes
GOAWAY_NOTICE = 1.0  # seconds between the drain's two GOAWAYs: what the client sent meanwhile is still served
_HIGH_WATER = 64 * 1024  # body bytes held for the app before its window stops reopening
# Fields HTTP/2 forbids (RFC 9113 §8.2.2); a response from an HTTP/1.1 app may carry them.
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})  # fmt: skip


class Stream(AppCall):
    """One HTTP/2 stream and its app call."""

    __slots__ = ("body_at", "body_timer", "head_only", "proto", "stream_id", "unacked")

    def __init__(self, proto: H2Protocol, stream_id: int, scope: dict[str, Any]) -> None:
        super().__init__(proto.site, proto.loop, scope)
        self.proto, self.stream_id = proto, stream_id
        self.unacked = 0  # flow-controlled bytes received and not yet given back to the client's window
        self.head_only = scope["method"] == "HEAD"
        self.body_at = 0.0  # when body bytes last came (body_timeout counts from it while the app waits)
        self.body_timer: asyncio.TimerHandle | None = None

    def _want_body(self) -> None:
        """The app waits for body bytes: a body silent for body_timeout ends the stream (the app sees a
        disconnect), as on HTTP/1.1 — a stream that never sends its body holds no slot for ever."""
        if self.body_timer is None and self.more_body:
            self.body_at = self.loop.time()
            self.body_timer = self.loop.call_later(self.proto.options.body_timeout, self._body_silent)

    def _body_silent(self) -> None:
        self.body_timer = None
        if not self.more_body or self.complete or self.disconnected:
            return
        silent = self.loop.time() - self.body_at
        timeout = self.proto.options.body_timeout
        if silent < timeout and self.waiter is not None:
            self.body_timer = self.loop.call_later(timeout - silent, self._body_silent)
        elif self.waiter is not None:  # the app still waits for it: the stream ends
            self.proto.reset(self, h2.errors.ErrorCodes.CANCEL)

    def arrived(self, data: bytes, more: bool) -> None:
        if data:
            self.body_at = self.loop.time()
        super().arrived(data, more)

    async def _room(self) -> None:
        if self.proto.write_paused and not self.disconnected:
            await self.proto.drain()

    def _taken(self, size: int) -> None:
        if self.unacked:
            self.proto.acknowledge(self, self.unacked)
            self.unacked = 0

    def _start(self, message: dict[str, Any]) -> None:
        status = message["status"]
        headers = [(b":status", b"%d" % status), *self.proto.default_headers()]
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name not in _CONNECTION_SPECIFIC:
                headers.append((name, value))
        end = self.head_only or status in (204, 304)
        self.proto.conn.send_headers(self.stream_id, headers, end_stream=end)
        if end:
            self._done()
        self.proto.flush_soon()

    def _body(self, body: bytes, more: bool) -> Awaitable[None] | None:
        if self.complete:
            return None  # a HEAD request's, or a 204's: its stream ended with the head
        if self.head_only:
            body = b""
        if body and self.proto.window(self.stream_id) < len(body):
            return self._body_when_there_is_room(body, more)
        if body or not more:
            self.proto.conn.send_data(self.stream_id, body, end_stream=not more)
        if not more:
            self._done()
        self.proto.flush_soon()
        return None

    async def _body_when_there_is_room(self, body: bytes, more: bool) -> None:
        view = memoryview(body)
        while view and not self.disconnected:
            room = self.proto.window(self.stream_id)
            if room <= 0:
                await self.proto.window_opens(self)
                continue
            piece, view = view[:room], view[room:]
            self.proto.conn.send_data(self.stream_id, bytes(piece), end_stream=not more and not view)
            self.proto.flush_soon()
        if not more and not self.disconnected:
            self._done()

    async def _zerocopysend(self, file: Any, offset: int | None, count: int | None, more: bool) -> None:
        fd = file.fileno()
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        if count is None:
            count = os.fstat(fd).st_size - offset
        sent = 0
        while sent < count and not self.disconnected:
            block = os.pread(fd, min(_BLOCK, count - sent), offset + sent)
            if not block:
                break
            sent += len(block)
            waits = self._body(block, more or sent < count)
            if waits is not None:
                await waits
        self.sent += sent
        if sent < count and not self.disconnected:
            self._abort()
        elif not more and not self.complete and not self.disconnected:
            self._body(b"", False)

    def _done(self) -> None:
        self.complete = True
        self.wake()
        self.proto.stream_done(self)

    def _failed(self) -> None:
        if self.disconnected:
            return
        if self.started:
            self._abort()
            return
        self.status = 500
        self.started = True
        headers = [(b":status", b"500"), *self.proto.default_headers(), (b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", b"21")]  # fmt: skip
        self.proto.conn.send_headers(self.stream_id, headers)
        self.proto.conn.send_data(self.stream_id, b"Internal Server Error", end_stream=True)
        self._done()
        self.proto.flush_soon()

    def _abort(self) -> None:
        self.proto.reset(self, h2.errors.ErrorCodes.INTERNAL_ERROR)


def _stop_timer(stream: Stream) -> None:
    if stream.body_timer is not None:
        stream.body_timer.cancel()
        stream.body_timer = None


class H2Protocol(WriteFlow):
    """One HTTP/2 connection (see the module docstring)."""

    def __init__(self, site: Site, loop: asyncio.AbstractEventLoop) -> None:
        self.site, self.loop, self.options = site, loop, site.options
        # What the client sends is validated; what we send is not normalized nor validated again by h2 (a third of
        # a response's CPU in a profile): the names are lowercased here, HTTP/1.1's connection fields dropped.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        # Twice the advertised limit: a list between the two is answered 431 (_scope), beyond it HPACK stops
        # decoding and the connection goes — bounded either way, even before the client acknowledges SETTINGS.
        self.conn.decoder.max_header_list_size = 2 * self.options.max_header_bytes
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int | None] | None = None
        self.scheme = "http"
        self.trusted = False
        self.streams: dict[int, Stream] = {}
        self.window_waiters: dict[int, asyncio.Future[None]] = {}
        self.draining = self.write_paused = self._flush_scheduled = False
        self.last_stream: int | None = None  # after the drain's final GOAWAY: streams above it are refused
        self._drained: asyncio.Future[None] | None = None
        self.resets: list[float] = []  # when the client reset streams, the last second's
        self.control: list[float] = []  # when SETTINGS and PING frames came, the last second's
        self.deadline = math.inf
        self.requests = 0

    # The connection.

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl

        self.transport = transport
        site = self.site
        site.connections.add(self)
        self.client, self.server = get_remote_addr(transport), get_local_addr(transport)
        self.scheme = "https" if is_ssl(transport) else "http"
        self.trusted = site.trust is not None and site.trust.peer_trusted(self.client)
        if site.balancer is not None:
            site.balancer.publish()
        self.conn.initiate_connection()
        self.conn.update_settings({
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.options.h2_max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.options.max_header_bytes,
        })  # fmt: skip
        self.flush()
        self.deadline = self.loop.time() + self.options.header_timeout  # the preface and a first request
        site.watch(self, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        site = self.site
        site.connections.discard(self)
        site.forget(self)
        if site.balancer is not None:
            site.balancer.publish()
        for stream in list(self.streams.values()):
            stream.gone()
            _stop_timer(stream)
        self.streams.clear()
        for waiter in self.window_waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._release_writers()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # A frame out of place, a header block too large, a CONTINUATION flood, too many streams at once: the
            # client broke the protocol, its connection ends (h2 queued the GOAWAY that says why).
            self.flush()
            self.transport.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event.stream_id, event.data, event.flow_controlled_length, event.stream_ended is not None)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.arrived(b"", False)
        elif isinstance(event, h2.events.StreamReset):
            self._reset_by_client(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_updated(event.stream_id)
        elif isinstance(event, (h2.events.RemoteSettingsChanged, h2.events.PingReceived)):
            self._control_frame()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.transport.close()

    # Requests.

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.last_stream is not None and stream_id > self.last_stream:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)  # never processed: safe to retry
            return
        if not self.draining:
            self.deadline = math.inf
        scope, refusal = self._scope(headers)
        if refusal is not None:
            self._refuse(stream_id, *refusal, ended)
            return
        stream = self.streams[stream_id] = Stream(self, stream_id, scope)
        if ended:
            stream.more_body = False
        self.requests += 1
        start(stream)

    def _scope(self, headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], tuple[int, str] | None]:
        """The ASGI scope of a request head, or why it is refused (status, reason)."""
        pseudo: dict[bytes, bytes] = {}
        fields: list[tuple[bytes, bytes]] = []
        size = 0
        options = self.options
        forwarded: list[bytes] = []
        proto: bytes | None = None
        length: bytes | None = None
        for name, value in headers:
            size += len(name) + len(value) + 32
            if name[:1] == b":":
                pseudo[name] = value
                continue
            if len(name) + len(value) + 4 > options.max_header_line_bytes:
                return {}, (431, "Request Header Fields Too Large: a field is too long")
            if name == b"content-length":
                length = value
            elif self.trusted and name == b"x-forwarded-for":
                forwarded.append(value)
            elif self.trusted and name == b"x-forwarded-proto":
                proto = value
            fields.append((name, value))
        if len(fields) > options.max_headers or size > options.max_header_bytes:
            return {}, (431, "Request Header Fields Too Large")
        limit = options.max_body_bytes
        if limit and length is not None and length.isdigit() and int(length) > limit:
            return {}, (413, "Content Too Large")
        authority = pseudo.get(b":authority")
        if authority is not None and not any(n == b"host" for n, _ in fields):
            fields.append((b"host", authority))
        method = pseudo.get(b":method", b"GET").decode("ascii")
        target = pseudo.get(b":path", b"/")
        raw, _, query = target.partition(b"?")
        path = raw.decode("latin-1")
        if b"%" in raw:
            path = unquote(path)
        site = self.site
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "2",
            "server": self.server, "client": self.client, "scheme": self.scheme, "method": method,
            "root_path": site.root_path, "path": site.root_path + path, "raw_path": site.root_path_bytes + raw,
            "query_string": query, "headers": fields, "state": site.app_state.copy(),
        }  # fmt: skip
        if self.trusted and (forwarded or proto is not None):
            assert site.trust is not None
            site.trust.apply(scope, proto, forwarded)
        return scope, None

    def _refuse(self, stream_id: int, status: int, reason: str, ended: bool) -> None:
        body = reason.encode("ascii")
        headers = [(b":status", b"%d" % status), *self.default_headers(),
                   (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, body, end_stream=True)
        if not ended:  # the answer is complete: the client may stop sending its body (RFC 9113 §8.1)
            with contextlib.suppress(h2.exceptions.StreamClosedError):  # unless the body is in already
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _data(self, stream_id: int, data: bytes, flow_controlled: int, ended: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.complete or stream.disconnected:
            self.conn.acknowledge_received_data(flow_controlled, stream_id)  # nobody wants it: room for the rest
            return
        limit = self.options.max_body_bytes
        stream.unacked += flow_controlled
        if limit and len(stream.body) + len(data) > limit:
            stream.gone()
            self.reset(stream, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream.arrived(data, not ended)
        if len(stream.body) < _HIGH_WATER:  # the app keeps up: the window reopens at once
            self.acknowledge(stream, stream.unacked)
            stream.unacked = 0

    def acknowledge(self, stream: Stream, size: int) -> None:
        if stream.stream_id in self.streams and size:
            self.conn.acknowledge_received_data(size, stream.stream_id)
            self.flush_soon()

    def stream_done(self, stream: Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        _stop_timer(stream)
        if not self.streams:
            if self.last_stream is not None:
                self.flush()
                self.transport.close()
            elif not self.draining:  # a draining connection waits for the final GOAWAY (its deadline)
                self.deadline = self.loop.time() + self.options.keepalive_timeout

    def reset(self, stream: Stream, code: h2.errors.ErrorCodes) -> None:
        if stream.stream_id in self.streams:
            stream.gone()
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.reset_stream(stream.stream_id, code)
            self.streams.pop(stream.stream_id, None)
            _stop_timer(stream)
            self.flush_soon()

    def _reset_by_client(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.gone()
        now = self.loop.time()
        self.resets = [t for t in self.resets if now - t < 1.0]
        self.resets.append(now)
        if len(self.resets) > self.options.h2_max_resets_per_second:  # rapid reset: the connection goes
            self.conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            self.flush()
            self.transport.close()

    def _control_frame(self) -> None:
        """SETTINGS and PING frames cost an answer each: a client sending more than CONTROL_PER_SECOND a second
        (a SETTINGS or PING flood) loses its connection."""
        now = self.loop.time()
        control = self.control
        control.append(now)
        if len(control) > CONTROL_PER_SECOND:
            del control[: len(control) - CONTROL_PER_SECOND - 1]
            if now - control[0] < 1.0:
                self.conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                self.flush()
                self.transport.close()

    # Writing, and flow control.

    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.site.default_fields()

    def window(self, stream_id: int) -> int:
        try:
            return min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
        except (h2.exceptions.StreamClosedError, KeyError):
            return 0

    async def window_opens(self, stream: Stream) -> None:
        waiter = self.window_waiters.get(stream.stream_id)
        if waiter is None:
            waiter = self.window_waiters[stream.stream_id] = self.loop.create_future()
        try:
            await waiter
        finally:
            self.window_waiters.pop(stream.stream_id, None)
        if stream.stream_id not in self.streams:
            stream.gone()

    def _window_updated(self, stream_id: int) -> None:
        ids = list(self.window_waiters) if stream_id == 0 else [stream_id]
        for sid in ids:
            waiter = self.window_waiters.get(sid)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def pause_writing(self) -> None:
        # The client does not read what we send: nor do we read what it sends (every frame may need an answer,
        # a SETTINGS ack, a PING's: a client that never reads would fill our memory with them).
        super().pause_writing()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()
        super().resume_writing()

    # Deadlines (Site sweeps them), and the drain.

    def timed_out(self, now: float) -> None:
        """No stream for keepalive_timeout (or no first request within header_timeout): GOAWAY, then close. While
        draining: the final GOAWAY, naming the last stream that will be served."""
        self.deadline = math.inf
        if self.draining and self.last_stream is None:
            self.last_stream = self.conn.highest_inbound_stream_id
            self._goaway(self.last_stream)
            if not self.streams:
                self.transport.close()
            return
        if not self.streams:
            self.conn.close_connection(h2.errors.ErrorCodes.NO_ERROR)
            self.flush()
            self.transport.close()

    def shutdown(self) -> None:
        """The worker drains, in two steps as RFC 9113 §6.8 advises: a GOAWAY naming the largest stream id (no new
        streams, please), then after :data:`GOAWAY_NOTICE` the final one naming the last stream served; streams
        the client opened before it saw the first are still served. Then the connection closes when its streams
        are done."""
        if self.draining:
            return
        self.draining = True
        self._goaway(2**31 - 1)
        self.deadline = self.loop.time() + GOAWAY_NOTICE

    def _goaway(self, last_stream_id: int) -> None:
        """A GOAWAY written past h2's state machine: h2 closes its connection on the first GOAWAY it sends (no frame
        either way after it), and a drain goes on serving the streams it names."""
        self.flush()
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        if not self.transport.is_closing():
            self.transport.write(frame.serialize())
