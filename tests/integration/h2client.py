"""A small blocking HTTP/2 client for the tests, on python-hyper's h2 (the library the server uses too; the
tests also check the wire with raw frames where h2 would refuse to send them)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: int | None = None  # the error code, if the server reset the stream
    ended: bool = False


class _GoawayTolerantConnection(h2.connection.H2Connection):
    """h2 closes its connection on any GOAWAY it receives (python-hyper/h2#1181), while RFC 9113 §6.8 lets the
    streams up to its last stream id finish: this client reads them, as nghttp2 and browsers do."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        result = super()._receive_goaway_frame(frame)
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


class H2Client:
    """One connection: requests may overlap (:meth:`start` then :meth:`wait`), every event is kept."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 20) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            raw = tls.wrap_socket(raw, server_hostname="127.0.0.1")
        self.sock = raw
        self.conn = _GoawayTolerantConnection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.responses: dict[int, Response] = {}
        self.goaways: list[h2.events.ConnectionTerminated] = []
        self.closed = False
        self.pending: dict[int, memoryview] = {}  # request bodies waiting for window
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def start(self, path: str, method: str = "GET", body: bytes = b"",
              headers: list[tuple[str, str]] | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "127.0.0.1"),
                  *(headers or [])]
        self.conn.send_headers(stream_id, fields, end_stream=not body)
        self.responses[stream_id] = Response()
        if body:
            self.pending[stream_id] = memoryview(body)
            self._send_pending()
        self.flush()
        return stream_id

    def _send_pending(self) -> None:
        for stream_id, view in list(self.pending.items()):
            while view:
                room = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if room <= 0:
                    break
                piece, view = view[:room], view[room:]
                self.conn.send_data(stream_id, bytes(piece), end_stream=not view)
            if view:
                self.pending[stream_id] = view
            else:
                del self.pending[stream_id]

    def read(self) -> bool:
        """One read's events; False once the server closed the connection."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self._event(event)
        self.flush()
        return True

    def _event(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            response = self.responses[event.stream_id]
            response.headers = dict(event.headers)
            response.status = int(response.headers[":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.responses:
                self.responses[event.stream_id].reset = event.error_code
                self.pending.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated):
            self._send_pending()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaways.append(event)

    def wait(self, stream_id: int) -> Response:
        response = self.responses[stream_id]
        while not response.ended and response.reset is None and self.read():
            pass
        return response

    def get(self, path: str = "/", **kwargs: Any) -> Response:
        return self.wait(self.start(path, **kwargs))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
