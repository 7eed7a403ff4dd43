"""HTTP and raw engines. ``serve`` runs until the worker is told to stop and returns an exit code."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from corepool.engines.routes import Route

if TYPE_CHECKING:
    from corepool.workerapi import WorkerLink, WorkerSpec

__all__ = ["Route", "import_all", "serve"]


def import_all() -> None:
    """Import every engine and what uvicorn loads lazily, in the primary before any fork.

    Forked workers and loaders then share these modules' pages instead of each importing them (about 60 ms and
    several MiB per process), and never import corepool code from disk that is newer than the running primary.
    """
    import uvicorn.lifespan.off
    import uvicorn.lifespan.on
    import uvicorn.middleware.asgi2
    import uvicorn.middleware.message_logger
    import uvicorn.middleware.proxy_headers  # noqa: F401

    from corepool.engines import asgi, raw, wsgi  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401


def serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve every route in this worker: HTTP routes on uvicorn (ASGI, or WSGI through the bridge), or one raw
    handler."""
    if any(route.interface == "raw" for route in routes):
        from corepool.engines import raw

        (route,) = routes  # settings refuse routes next to a raw handler
        return raw.serve(route.app, route.sockets, link, spec)
    from corepool.engines import asgi

    return asgi.serve(routes, link, spec)
