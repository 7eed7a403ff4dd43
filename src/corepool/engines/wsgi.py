"""WSGI apps on the same uvicorn engine, through a2wsgi's thread pool (the choice is measured in
docs/benchmarks/wsgi-engines.md).

Health pings go through the app's thread pool before they are answered: a worker whose every WSGI thread is
stuck fails its ping and is replaced, instead of being vouched for by an idle event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from a2wsgi import WSGIMiddleware

THREADS = 10

Probe = Callable[[Callable[[], None]], None]


def adapt(app: Any) -> tuple[Any, Probe]:
    """The WSGI app as an ASGI app, and a probe that runs a callback on the app's thread pool."""
    wrapped = WSGIMiddleware(app, workers=THREADS)

    def probe(then: Callable[[], None]) -> None:
        wrapped.executor.submit(then)

    return wrapped, probe
