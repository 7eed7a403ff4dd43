"""WebSockets on uvicorn's own implementations, closed with 1001 (going away) when a worker drains.

uvicorn, on shutdown, sends close code 1012 (service restart) and closes the TCP connection at once, without
waiting for the client's close frame. A worker that drains is going away while the pool carries on, so corepool
sends 1001, tells the app ``websocket.disconnect`` with 1001, and completes the closing handshake: the
connection ends when the client answers the close frame (or after uvicorn's close timeout), never by a reset.
A WebSocket still opening when the drain comes (the app has not accepted yet), or upgraded afterwards on one of
the worker's idle connections, opens and goes away the same way (:class:`GoingAway`) instead of getting uvicorn's
500 or living until graceful_timeout.

``websockets`` (the default, and what ``auto`` picks) runs uvicorn's sans-I/O protocol on the ``websockets``
package, a dependency of corepool and of ``uvicorn[standard]``; ``wsproto`` runs uvicorn's wsproto protocol
(install ``wsproto``). Measured on a 2-core machine (one worker, 50 clients echoing 100-byte messages, worker CPU
time per message, 3 runs): websockets 27-33 us, wsproto 34-41 us, so wsproto costs about 1.2x the CPU.
"""

from __future__ import annotations

from typing import Any

from corepool import log

GOING_AWAY = 1001
OPEN_GRACE = 1.0  # seconds a WebSocket opened during a drain stays open if its app never waits for a message
CLOSE_TIMEOUT = 5.0  # seconds to wait for the client's close frame, where uvicorn has no close timeout


def protocol_class(choice: str, ping_interval: float = 0.0) -> type[Any] | None:
    """The uvicorn WebSocket protocol class for the ``ws`` setting (None: WebSockets off); says so when it cannot
    honour ``ws_ping_interval``."""
    if choice == "none":
        return None
    if choice in ("auto", "websockets"):
        try:
            return _websockets_class()
        except ImportError as exc:
            if choice == "websockets":  # uvicorn < 0.35 (Debian 13 has 0.32) has no sans-I/O websockets protocol
                import uvicorn

                raise ImportError(f"ws = websockets needs uvicorn's sans-I/O websockets protocol (uvicorn >= 0.35; "
                                  f"this is {uvicorn.__version__}): use ws = auto or wsproto ({exc})") from None
    try:
        cls = _wsproto_class()
    except ImportError:
        if choice == "wsproto":
            raise
    else:
        if ping_interval and not hasattr(cls, "start_keepalive"):
            log.event("websocket", f"ws_ping_interval ({ping_interval:g}s) has no effect: this uvicorn's wsproto "
                      "protocol sends no pings (uvicorn >= 0.35 does)", warning=True)
        return cls
    # auto, and neither implementation is importable here (an old uvicorn without wsproto): HTTP only.
    log.event("websocket", "no WebSocket implementation available (uvicorn >= 0.35 or wsproto): WebSockets off",
              warning=True)
    return None


class GoingAway:
    """Mixed into uvicorn's WebSocket protocols: a drain closes with 1001 and completes the closing handshake.

    A WebSocket whose opening handshake is unfinished when its worker drains (the app has not accepted yet) is not
    answered 500, as uvicorn does: a client that connected during a reload would see a failed connection. It opens
    when the app accepts, and is closed with 1001 when the app next waits for a message (after its greeting), or
    :data:`OPEN_GRACE` seconds after the accept for an app that only sends.
    """

    going_away = False
    close_once_open = False

    def shutdown(self) -> None:
        if self.going_away:
            return
        self.going_away = True
        if self.close_sent or self.transport.is_closing():
            super().shutdown()  # type: ignore[misc]
        elif not self.handshake_complete:
            self.close_once_open = True
        else:
            self._close_going_away()

    async def send(self, message: Any) -> None:
        await super().send(message)  # type: ignore[misc]
        if self.close_once_open and message.get("type") == "websocket.accept":
            self.loop.call_later(OPEN_GRACE, self._close_once_open)

    async def receive(self) -> Any:
        self._close_once_open()
        return await super().receive()  # type: ignore[misc]

    def _close_once_open(self) -> None:
        if self.close_once_open and self.handshake_complete:
            self.close_once_open = False
            if not self.close_sent and not self.transport.is_closing():
                self._close_going_away()

    def _close_going_away(self) -> None:
        stop_keepalive = getattr(self, "stop_keepalive", None)  # uvicorn < 0.35's wsproto protocol pings nobody
        if stop_keepalive is not None:
            stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": GOING_AWAY, "reason": "going away"})
        self._send_close_frame(GOING_AWAY, "going away")
        self.close_sent = True
        if self.read_paused:  # the client's close frame must be read
            self.read_paused = False
            self.transport.resume_reading()
        # A client that never answers the close frame: uvicorn's close timeout where it has one.
        self.close_timer = self.loop.call_later(getattr(self, "close_timeout", CLOSE_TIMEOUT), self.transport.close)

    def _send_close_frame(self, code: int, reason: str) -> None:
        raise NotImplementedError

    # uvicorn's protocol attributes the mixin uses (annotations only: the values are uvicorn's)
    loop: Any
    transport: Any
    queue: Any
    handshake_complete: bool
    close_sent: bool
    read_paused: bool
    close_timer: Any


def _websockets_class() -> type[Any]:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class GoingAwayWebSocketsProtocol(GoingAway, WebSocketsSansIOProtocol):
        """uvicorn's sans-I/O websockets protocol, going away with 1001 on drain."""

        def _send_close_frame(self, code: int, reason: str) -> None:
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))

    return GoingAwayWebSocketsProtocol


def _wsproto_class() -> type[Any]:
    import wsproto.events
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    class GoingAwayWSProtocol(GoingAway, WSProtocol):
        """uvicorn's wsproto protocol, going away with 1001 on drain."""

        def _send_close_frame(self, code: int, reason: str) -> None:
            self.transport.write(self.conn.send(wsproto.events.CloseConnection(code=code, reason=reason)))

    if not hasattr(WSProtocol, "handle_text"):
        return GoingAwayWSProtocol

    class SizedWSProtocol(GoingAwayWSProtocol):
        """uvicorn < 0.35's wsproto protocol (Debian 13 has 0.32) gathers a message of any size: ws_max_size is
        enforced here as newer uvicorn does, a message over it closes the connection with 1009."""

        message_bytes = 0

        def handle_text(self, event: Any) -> None:
            if self._within_max_size(len(event.data.encode()), event.message_finished):
                super().handle_text(event)  # type: ignore[misc]  # uvicorn < 0.35 only

        def handle_bytes(self, event: Any) -> None:
            if self._within_max_size(len(event.data), event.message_finished):
                super().handle_bytes(event)  # type: ignore[misc]  # uvicorn < 0.35 only

        def _within_max_size(self, size: int, finished: bool) -> bool:
            if self.close_sent:
                return False
            self.message_bytes += size  # of the message being gathered, fragments included
            total = self.message_bytes
            if finished:
                self.message_bytes = 0
            if total <= self.config.ws_max_size:
                return True
            self.close_sent = True
            reason = f"Message exceeds the maximum size ({self.config.ws_max_size} bytes)"
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1009, "reason": reason})
            if not self.transport.is_closing():
                self._send_close_frame(1009, reason)
                self.transport.close()
            return False

    return SizedWSProtocol
