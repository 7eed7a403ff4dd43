"""ASGI on uvicorn's server (httptools parser, uvloop loop), serving sockets the worker inherited.

Changes to uvicorn's behaviour:

* uvicorn's signal handling is replaced by the worker's own: SIGTERM starts a drain.
* HTTP/1.1 is corepool's own protocol, :class:`corepool.engines.http11.HTTP11Protocol`: the front line's limits,
  checks and timeouts built in, the request's clock and counts without a middleware, and a drain that never
  closes a connection under a client's request (uvicorn closes idle keep-alive connections at once, racing with a
  request the client may be sending). uvicorn's server remains the shell around it: lifespan, its connections
  and tasks that a shutdown waits for, and its WebSocket protocols.
* WebSockets (ASGI routes) run on uvicorn's implementations, closed with 1001 on drain
  (:mod:`corepool.engines.websocket`); proxy headers and the access log are :mod:`corepool.engines.front`.
* Connections are accepted by :class:`corepool.engines.accept.Acceptor`, one per wake-up, pausing while this
  worker holds more than its share of the pool's connections (:mod:`corepool.balance`), instead of by asyncio's
  server, which takes a whole burst in whichever worker wakes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Callable, Generator, Iterable
from typing import Any

import uvicorn

from corepool import log
from corepool.balance import cell_of
from corepool.engines import front, tls, tracking, websocket
from corepool.engines.accept import Acceptor, Balancer
from corepool.engines.eventloop import loop_factory
from corepool.engines.http11 import HTTP11Protocol
from corepool.engines.routes import Route
from corepool.engines.site import Site
from corepool.engines.stats import RequestStats
from corepool.engines.stuck import StuckWatch
from corepool.settings import HttpOptions
from corepool.workerapi import EXIT_BOOT_FAILED, EXIT_OK, WorkerLink, WorkerSpec


class PoolServer(uvicorn.Server):
    """uvicorn's Server without its own signal handling, accepting through :class:`Acceptor`."""

    def __init__(self, config: uvicorn.Config, balancer: Balancer, http_app: Any, options: HttpOptions,
                 requests: RequestStats, wsgi: bool, tls_context: ssl.SSLContext | None) -> None:  # fmt: skip
        super().__init__(config)
        self.tls = tls_context
        self.up = asyncio.Event()
        self.balancer = balancer
        self.http_app, self.options, self.requests, self.wsgi = http_app, options, requests, wsgi
        self.acceptors: list[Acceptor] = []
        balancer.servers.append(self)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the worker owns its signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # lifespan, protocol set-up; we accept ourselves
        if not self.started:
            return
        loop = asyncio.get_running_loop()
        config, state, app_state = self.config, self.server_state, self.lifespan.state
        ws_class = config.ws_protocol_class

        def websocket(_transport: asyncio.Transport) -> asyncio.Protocol:
            assert ws_class is not None
            protocol: asyncio.Protocol = ws_class(config=config, server_state=state, app_state=app_state,
                                                  _loop=loop)  # type: ignore[call-arg]  # fmt: skip
            return protocol

        site = Site(self.http_app, self.options, self.requests, self.balancer, state, app_state, wsgi=self.wsgi,
                    upgrade=websocket if ws_class is not None else None)  # fmt: skip

        def create_protocol() -> asyncio.Protocol:
            return HTTP11Protocol(site, loop)

        handshake = self.options.header_timeout  # a handshake that never ends is a head that never comes
        self.acceptors = [Acceptor(loop, sock, create_protocol, self.balancer, self.tls, handshake)
                          for sock in sockets or []]  # fmt: skip
        self.up.set()

    def stop_accepting(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()


def make_config(app: Any, spec: WorkerSpec, wsgi: bool = False) -> uvicorn.Config:
    """uvicorn's settings for one route; a WSGI route (the bridge) gets no lifespan and no WebSockets."""
    options = spec.http
    ws = None if wsgi else websocket.protocol_class(options.ws, options.ws_ping_interval)
    return uvicorn.Config(
        app,
        interface="asgi3" if wsgi else "auto",
        http="httptools",  # unused: PoolServer builds corepool's own protocol (engines/http11.py)
        ws=ws or "none",
        ws_max_size=options.ws_max_size,
        ws_ping_interval=options.ws_ping_interval or None,
        ws_ping_timeout=options.ws_ping_timeout,
        lifespan="off" if wsgi else "auto",
        log_config=None,
        access_log=False,  # corepool's own access log, in gunicorn's atoms (engines/http11.py)
        timeout_keep_alive=int(options.keepalive_timeout) or 1,
        # None: uvicorn never cancels a request itself; one still running at graceful_timeout ends with the
        # primary's SIGKILL of its worker (the client sees the connection drop, never a made-up 500).
        timeout_graceful_shutdown=None,
        proxy_headers=False,  # corepool's own (engines/front.py), which also trusts unix-socket peers
        root_path=options.root_path,
        server_header=options.server_header,
        date_header=options.date_header,
    )


async def _serve_all(
    servers: list[tuple[PoolServer, list[socket.socket]]], link: WorkerLink, stats: Callable[[], dict[str, Any]],
    watch: StuckWatch,
) -> int:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(server.serve(sockets=sockets)) for server, sockets in servers]
    all_up = asyncio.ensure_future(_wait_all([server.up for server, _ in servers]))  # noqa: RUF006 (awaited below)
    done, _ = await asyncio.wait([all_up, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if all_up not in done:  # a server ended during its start-up (the app's lifespan startup failed, say)
        all_up.cancel()
        for server, _ in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        return EXIT_BOOT_FAILED

    def drain() -> None:
        if any(server.should_exit for server, _ in servers):
            return
        log.event("drain", "draining: no new connections, finishing in-flight requests")
        balancer.stop()
        for server, _ in servers:
            # Stop accepting now rather than at uvicorn's next tick, and say so: the primary ends a reload
            # only once no retired worker can take a new connection.
            server.stop_accepting()
            server.should_exit = True
            # Every connection drains now, not at uvicorn's next tick: a request that arrives after the primary
            # heard "draining" must be answered with Connection: close, and a WebSocket still opening then must
            # be closed with 1001 once open (corepool.engines.websocket), like the others.
            for connection in list(server.server_state.connections):
                connection.shutdown()
        link.send("draining")

    loop.add_signal_handler(signal.SIGTERM, drain)
    balancer = servers[0][0].balancer
    balancer.accepting = True
    balancer.publish()
    link.stats = stats
    link.on_primary_gone = drain
    link.attach(loop)
    link.send("ready")
    watch.start(loop)
    try:
        await asyncio.gather(*tasks)
    finally:
        watch.stop()
    link.send("pong", seq=None, **stats())  # the requests served since the last ping count too
    return EXIT_OK


async def _wait_all(events: Iterable[asyncio.Event]) -> None:
    for event in list(events):
        await event.wait()


def serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve every (ASGI or WSGI) route on one event loop until a drain ends."""
    try:
        # Loaded by every generation's workers as they boot: a reload serves renewed certificates, and one that
        # does not load fails the boot (the reload rolls back; the old workers keep the old certificate).
        tls_context = tls.context(spec.http, alpn=("h2", "http/1.1") if spec.http.http2 else ("http/1.1",))
    except tls.TLSError as exc:
        link.send("boot_error", error=str(exc), detail="")
        return EXIT_BOOT_FAILED
    from corepool.engines import wsgi

    balancer = Balancer(spec.board, cell_of(spec.slot, spec.generation))
    log.bind(worker_pid=os.getpid(), generation=spec.generation, slot=spec.slot)
    tracking.silence_uvicorn_app_errors()
    servers = []
    requests = RequestStats()
    bridges: list[wsgi.WSGIBridge] = []
    for route in routes:
        if route.interface == "wsgi":
            bridge = wsgi.adapt(route.app, spec.http)
            bridges.append(bridge)
            config = make_config(bridge, spec, wsgi=True)
        else:
            config = make_config(route.app, spec)
        config.load()
        http_app = config.loaded_app  # HTTP/1.1 requests: the protocol counts, clocks and trusts proxies itself
        # WebSockets go through uvicorn's protocols, which call config.loaded_app: proxy headers, counting and
        # errors logged once as middleware there.
        if spec.http.proxy_headers:
            config.loaded_app = front.ProxyHeaders(config.loaded_app, spec.http.forwarded_allow_ips)
        config.loaded_app = tracking.WebSocketTracker(config.loaded_app, requests)
        servers.append((PoolServer(config, balancer, http_app, spec.http, requests, route.interface == "wsgi",
                                   tls_context), route.sockets))  # fmt: skip

    def stats() -> dict[str, Any]:
        """What a pong tells the primary about this worker."""
        return {
            **requests.pong(),
            "connections": balancer.open_connections(),
            "threads": sum(b.threads for b in bridges),
            "busy_threads": sum(b.busy for b in bridges),
        }

    def on_request_limit(limit: int) -> None:
        """max_requests: report once on reaching ``limit``, so the primary can start the replacement."""

        def report() -> None:
            link.send("pong", seq=None, **stats())

        requests.limit_requests(limit, report)

    link.on_request_limit = on_request_limit
    link.on_share = balancer.cap_share
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        # A request past request_timeout is reported within a second with its stack, without waiting for a ping.
        watch = StuckWatch(requests, spec.http.request_timeout, spec.http.health_timeout,
                           lambda: link.send("pong", seq=None, **stats()))
        return runner.run(_serve_all(servers, link, stats, watch))
