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
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from corepool import log
from corepool.worker import EXIT_OK, WorkerLink, WorkerSpec


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
    """uvicorn's Server that reports readiness on the worker's channel and drains on SIGTERM."""

    def __init__(self, config: uvicorn.Config, link: WorkerLink) -> None:
        super().__init__(config)
        self.link = link

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the worker owns its signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.drain)
        self.link.requests = lambda: self.server_state.total_requests
        self.link.on_primary_gone = self.drain
        self.link.attach(loop)
        self.link.send("ready")

    def drain(self) -> None:
        if not self.should_exit:
            log.event("drain", "draining: no new connections, finishing in-flight requests")
        self.should_exit = True


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


def run_server(config: uvicorn.Config, listeners: list[socket.socket], link: WorkerLink) -> int:
    server = PoolServer(config, link)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(server.serve(sockets=listeners))
    return EXIT_OK


def serve(app: Any, listeners: list[socket.socket], link: WorkerLink, spec: WorkerSpec) -> int:
    return run_server(make_config(app, spec), listeners, link)
