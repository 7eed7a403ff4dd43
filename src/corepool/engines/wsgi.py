"""WSGI on the same uvicorn engine, through a2wsgi's thread pool (the choice is measured in
docs/benchmarks/wsgi-engines.md).

Health pings go through the app's thread pool before they are answered: a worker whose every WSGI thread is
stuck fails its ping and is replaced, instead of being vouched for by an idle event loop.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from a2wsgi import WSGIMiddleware

from corepool.engines.asgi import make_config, run_server
from corepool.worker import WorkerLink, WorkerSpec

THREADS = 10


def serve(app: Any, listeners: list[socket.socket], link: WorkerLink, spec: WorkerSpec) -> int:
    wrapped = WSGIMiddleware(app, workers=THREADS)

    def probe(then: Callable[[], None]) -> None:
        wrapped.executor.submit(then)

    link.probe = probe
    return run_server(make_config(wrapped, spec, interface="asgi3"), listeners, link)
