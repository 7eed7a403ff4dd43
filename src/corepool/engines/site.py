"""What every HTTP connection of one route shares: the app, the limits, the worker's request stats, whom to trust
for proxy headers, the default response headers, the WebSocket hand-over, and one timer for all of them.

Per connection, the protocol keeps one deadline (a float) instead of arming and cancelling a timer per request;
:class:`Site`'s sweeper looks at every connection's deadline a few times a second. Timeouts are then found up to
:data:`SWEEP` late (a quarter of the shortest timeout when that is less), which none of them needs to be sooner.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from corepool.engines.front import ProxyTrust
from corepool.engines.stats import RequestStats
from corepool.settings import HttpOptions

if TYPE_CHECKING:
    from corepool.engines.accept import Balancer

SWEEP = 0.5  # seconds between two looks at the connections' deadlines, at most


class Timed(Protocol):
    deadline: float

    def timed_out(self, now: float) -> None: ...


class Site:
    """One route's HTTP/1.1 side (see the module docstring)."""

    def __init__(self, app: Any, options: HttpOptions, stats: RequestStats, balancer: Balancer | None,
                 server_state: Any, app_state: dict[str, Any], wsgi: bool = False,
                 upgrade: Callable[[Any], asyncio.Protocol] | None = None) -> None:  # fmt: skip
        self.app, self.options, self.stats, self.balancer = app, options, stats, balancer
        self.server_state = server_state  # uvicorn's: its connections set is what its shutdown waits for
        self.connections: set[Any] = server_state.connections
        self.app_state = app_state  # the lifespan's state, copied into every request's scope
        self.wsgi = wsgi  # the app is the WSGI bridge: it pauses its requests' clocks itself
        self.upgrade = upgrade  # a WebSocket protocol for an upgraded connection (None: WebSockets off)
        self.trust = ProxyTrust(options.forwarded_allow_ips) if options.proxy_headers else None
        self.root_path = options.root_path
        self.root_path_bytes = options.root_path.encode("utf-8")
        self.access_log = options.access_log_format if options.access_log else None
        self.timed: set[Timed] = set()
        timeouts = [t for t in (options.header_timeout, options.body_timeout, options.keepalive_timeout) if t > 0]
        self.sweep = min([SWEEP, *(t / 4 for t in timeouts)])
        self._sweeper: asyncio.TimerHandle | None = None
        self._second = -1
        self._head = b""
        self._fields: list[tuple[bytes, bytes]] = []
        self._held: list[Any] = []

    def default_head(self) -> bytes:
        """The headers every response starts with (``date``, ``server``), rebuilt once a second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            head = []
            if self.options.date_header:
                head.append(b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n")
            if self.options.server_header:
                head.append(b"server: corepool\r\n")
            self._head = b"".join(head)
            self._fields = [(n, v) for n, _, v in (line[:-2].partition(b": ") for line in head)]  # no CRLF
        return self._head

    def default_fields(self) -> list[tuple[bytes, bytes]]:
        """:meth:`default_head` as (name, value) pairs, for HTTP/2 (the same list, rebuilt with it)."""
        self.default_head()
        return self._fields

    def hold(self, exchange: Any, loop: asyncio.AbstractEventLoop) -> None:
        """A response head waits for its body, to go out in one write; at the loop's next turn it goes out alone
        (one callback per turn for all of them: in the common case every body came first)."""
        if not self._held:
            loop.call_soon(self._flush_held)
        self._held.append(exchange)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for exchange in held:
            exchange.flush_head()

    def watch(self, connection: Timed, loop: asyncio.AbstractEventLoop) -> None:
        """Look at this connection's deadline from now on, until :meth:`forget`."""
        self.timed.add(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.sweep, self._sweep, loop)

    def forget(self, connection: Timed) -> None:
        self.timed.discard(connection)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for connection in [c for c in self.timed if c.deadline <= now]:
            connection.timed_out(now)
        self._sweeper = loop.call_later(self.sweep, self._sweep, loop) if self.timed else None
