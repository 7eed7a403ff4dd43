"""Accepting connections on a listening socket the worker shares with the rest of the pool, fairly.

:class:`Acceptor` takes one connection per wake-up and none while this worker holds more than its share of the
pool's open connections; :class:`Balancer` is this worker's side of the shared board (:mod:`corepool.balance`)
that says what that share is. Engine-neutral: any server whose connections are counted in a
``server_state.connections`` set can use them.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

from corepool import log
from corepool.balance import PAUSE, AcceptQuota, Board


class Balancer:
    """This worker's side of the shared connection board."""

    def __init__(self, board: Board | None, cell: int) -> None:
        self.board, self.cell = board, cell
        self.servers: list[Any] = []  # the servers whose server_state.connections this worker counts
        self.accepting = False
        self.quota: AcceptQuota | None = None  # while this worker is a reload's canary

    def cap_share(self, capped: bool) -> None:
        """Keep to a share of the accepted connections from now on (a canary), or stop doing so."""
        self.quota = AcceptQuota(self.board, self.cell) if capped and self.board is not None else None

    def accepted(self) -> None:
        if self.board is not None:
            self.board.accepted(self.cell)

    def open_connections(self) -> int:
        return sum(len(server.server_state.connections) for server in self.servers)

    def publish(self) -> None:
        if self.board is not None and self.accepting:
            self.board.set(self.cell, self.open_connections())

    def over_share(self) -> bool:
        if self.board is None:
            return False
        return self.board.over_share(self.open_connections()) or (self.quota is not None and self.quota.over())

    def stop(self) -> None:
        self.accepting = False
        if self.board is not None:
            self.board.set(self.cell, None)


class Acceptor:
    """Accepts on a shared listening socket: one connection per wake-up, none while over this worker's share."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, factory: Callable[[], asyncio.Protocol],
        balancer: Balancer, tls: ssl.SSLContext | None = None, handshake_timeout: float = 60.0,
    ) -> None:
        """``tls``: connections are TLS, and a handshake not done within ``handshake_timeout`` ends them."""
        self.loop, self.sock, self.factory, self.balancer = loop, sock, factory, balancer
        self.tls, self.handshake_timeout = tls, handshake_timeout
        self.closed = False
        self.failed_handshakes = 0
        self._resume_handle: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        if self.balancer.over_share():
            self._pause(PAUSE)
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS...: back off instead of spinning
            log.event("accept", f"accept failed: {exc.strerror or exc}", warning=True)
            self._pause(0.1)
            return
        conn.setblocking(False)
        self.balancer.accepted()
        if self.tls is None:
            task = self.loop.create_task(self.loop.connect_accepted_socket(self.factory, conn))
        else:
            task = self.loop.create_task(self.loop.connect_accepted_socket(
                self.factory, conn, ssl=self.tls, ssl_handshake_timeout=self.handshake_timeout))
        self._pending.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A TLS handshake that failed (garbage, no shared cipher, a client that gave up) or timed out: the
            # connection is closed; a hostile client must not write the log, so this costs it a counter only.
            self.failed_handshakes += 1

    def _pause(self, seconds: float) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self._resume_handle = self.loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._resume_handle = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting (the socket stays open for the other workers)."""
        if self.closed:
            return
        self.closed = True
        if self._resume_handle is not None:
            self._resume_handle.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
