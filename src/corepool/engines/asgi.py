"""ASGI on uvicorn's server (httptools parser, uvloop loop), serving sockets the worker inherited.

Two changes to uvicorn's behaviour, both for reloads that clients never notice:

* uvicorn's signal handling is replaced by the worker's own: SIGTERM starts a drain.
* During a drain uvicorn closes idle keep-alive connections at once, racing with a request the client may be
  sending on them at that moment (it then sees a reset). :class:`DrainingHttpToolsProtocol` instead keeps an
  idle connection open and answers its next request with ``Connection: close``; connections that stay idle
  are closed by the keep-alive timeout, or at the end of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Generator, Iterable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from corepool import log
from corepool.engines import Route
from corepool.worker import EXIT_BOOT_FAILED, EXIT_OK, WorkerLink, WorkerSpec


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a drain that never closes a connection under a client's request."""

    draining = False

    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            return  # idle: its next request gets Connection: close (see on_headers_complete)
        self.cycle.keep_alive = False

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False


class PoolServer(uvicorn.Server):
    """uvicorn's Server without its own signal handling, telling when it accepts."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the worker owns its signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.up.set()


def make_config(app: Any, spec: WorkerSpec, interface: str = "auto") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        interface=interface,  # type: ignore[arg-type]
        http=DrainingHttpToolsProtocol,
        lifespan="auto",
        log_config=None,
        access_log=spec.access_log,
        timeout_keep_alive=int(spec.keepalive_timeout) or 1,
        timeout_graceful_shutdown=max(1, int(spec.drain_timeout)),
        ws="none",
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


async def _serve_all(servers: list[tuple[PoolServer, list[socket.socket]]], link: WorkerLink) -> int:
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
        for server, _ in servers:
            # Stop accepting now rather than at uvicorn's next tick, and say so: the primary ends a reload
            # only once no retired worker can take a new connection.
            for listening in server.servers:
                listening.close()
            server.should_exit = True
        link.send("draining")

    loop.add_signal_handler(signal.SIGTERM, drain)
    link.requests = lambda: sum(server.server_state.total_requests for server, _ in servers)
    link.on_primary_gone = drain
    link.attach(loop)
    link.send("ready")
    await asyncio.gather(*tasks)
    return EXIT_OK


async def _wait_all(events: Iterable[asyncio.Event]) -> None:
    for event in list(events):
        await event.wait()


def serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve every (ASGI or WSGI) route on one event loop until a drain ends."""
    from corepool.engines import wsgi

    servers = []
    for route in routes:
        if route.interface == "wsgi":
            app, probe = wsgi.adapt(route.app)
            link.probe = link.probe or probe
            servers.append((PoolServer(make_config(app, spec, "asgi3")), route.sockets))
        else:
            servers.append((PoolServer(make_config(route.app, spec)), route.sockets))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_serve_all(servers, link))
