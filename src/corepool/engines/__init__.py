"""HTTP and raw engines. ``serve`` runs until the worker is told to stop and returns an exit code."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from corepool.engines.routes import Route

if TYPE_CHECKING:
    from corepool.settings import HttpOptions
    from corepool.workerapi import WorkerLink, WorkerSpec

__all__ = ["Route", "bridge_only", "import_all", "serve", "wsgi_engine"]


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


def wsgi_engine(options: HttpOptions) -> tuple[str, str]:
    """(engine, why) for the ``wsgi_engine`` setting: "granian" or "bridge", and the reason in words.

    Raises :class:`corepool.settings.SettingsError` when ``granian`` is asked for and cannot serve (a start error):
    granian is not installed as pinned, or the settings ask for what corepool serves on the bridge only.
    """
    from corepool.engines import granian_wsgi
    from corepool.settings import SettingsError

    setting = options.wsgi_engine
    if setting == "bridge":
        return "bridge", "wsgi_engine is bridge"
    problem = granian_wsgi.unusable()
    if problem is None:
        problem = bridge_only(options)
        if problem is None:
            # HTTP/2 stays the ASGI sockets' and the bridge's: granian is driven for HTTP/1.1 (its own HTTP/2 is
            # not wired to corepool's limits and drain), and a WSGI app behind a proxy rarely needs h2c.
            h1_only = "; HTTP/2 (h2c) is not offered on the sockets it serves (wsgi_engine = bridge offers it)"
            return "granian", f"granian {granian_wsgi.PINNED} is installed" + (
                "" if setting == "granian" else " (wsgi_engine auto)") + (h1_only if options.http2 else "")
        problem += ", which only the bridge serves"
    if setting == "granian":
        raise SettingsError(f"wsgi_engine: granian cannot serve: {problem} (or set wsgi_engine to auto or bridge)")
    return "bridge", problem


def bridge_only(options: HttpOptions) -> str | None:
    """What these settings ask for that corepool serves on the bridge only, or None. corepool drives granian's
    worker for cleartext HTTP/1.1: its TLS (which granian has) is not wired to corepool's settings, reloads and
    checks, so a configuration with TLS runs WSGI on the bridge. (HTTP/2 is simply not offered on the sockets
    granian serves: see :func:`wsgi_engine`.)"""
    if options.ssl_certfile:
        return "ssl_certfile is set (TLS)"
    return None


def serve(routes: list[Route], link: WorkerLink, spec: WorkerSpec) -> int:
    """Serve every route in this worker: HTTP routes on uvicorn (ASGI, or WSGI through the bridge), WSGI routes
    on granian's runtime (the ``wsgi_engine`` setting), or one raw handler."""
    if any(route.interface == "raw" for route in routes):
        from corepool.engines import raw

        (route,) = routes  # settings refuse routes next to a raw handler
        return raw.serve(route.app, route.sockets, link, spec)
    if spec.http.wsgi_engine != "bridge" and any(route.interface == "wsgi" for route in routes):
        problem = native_problem(routes, spec.http)
        if problem is None:
            from corepool.engines import granian_wsgi

            return granian_wsgi.serve(routes, link, spec)
        if problem and spec.slot == 0:  # one line per generation, not one per worker
            from corepool import log

            log.event("engine", f"WSGI is served by the bridge: {problem}", warning=True)
    from corepool.engines import asgi

    return asgi.serve(routes, link, spec)


def native_problem(routes: list[Route], options: HttpOptions) -> str | None:
    """Why this worker's WSGI routes do not run on granian: "" when the start line already said why (``auto``
    without granian, or with settings only the bridge serves), a reason to log when that line is no longer true
    (an ASGI route beside them: one engine per worker; a socket granian must not be given; ``granian`` in a
    re-read config that it cannot serve), None when they can."""
    from corepool.engines import granian_wsgi

    problem = granian_wsgi.unusable() or bridge_only(options)
    if problem is not None:
        return problem if options.wsgi_engine == "granian" else ""
    if any(route.interface != "wsgi" for route in routes):
        return "this worker also serves ASGI routes, and a worker runs one engine"
    for route in routes:
        for sock in route.sockets:
            problem = granian_wsgi.listener_problem(sock)
            if problem is not None:
                return f"granian must not be given {problem}"
    return None
