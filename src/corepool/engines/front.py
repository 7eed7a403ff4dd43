"""ASGI middleware of the front line: proxy headers (with unix-socket peers trusted) and the access log.

Both wrap every HTTP route, ASGI or WSGI (the WSGI bridge builds ``REMOTE_ADDR`` and ``wsgi.url_scheme`` from
the scope these set).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from corepool import log
from corepool.settings import HttpOptions

App = Callable[..., Any]


class ProxyHeaders:
    """uvicorn's ``X-Forwarded-For``/``X-Forwarded-Proto`` handling (gunicorn's semantics for
    ``forwarded_allow_ips``), except that a peer on a unix socket is always trusted: only the socket's owner
    and group can connect to it, so it is the proxy the administrator put there. (uvicorn sees no address on a
    unix socket, so it never trusts one unless told ``*``.)"""

    def __init__(self, app: App, forwarded_allow_ips: str) -> None:
        self.app = app
        self.by_address = ProxyHeadersMiddleware(app, forwarded_allow_ips)
        self.unix = ProxyHeadersMiddleware(app, "*")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
        elif _on_unix_socket(scope):
            await self.unix(scope, receive, send)  # type: ignore[arg-type]
        else:
            await self.by_address(scope, receive, send)  # type: ignore[arg-type]


def _on_unix_socket(scope: dict[str, Any]) -> bool:
    server = scope.get("server")
    return scope.get("client") is None and (server is None or server[1] is None)


class _Atoms(dict[str, str]):
    """gunicorn's ``SafeAtoms``: unknown atoms print as ``-``; ``{name}i``/``{name}o`` are request/response
    headers, ``{name}e`` environment variables."""

    def __init__(self, atoms: dict[str, str], request: dict[str, str], response: dict[str, str]) -> None:
        super().__init__(atoms)
        self.request, self.response = request, response

    def __missing__(self, key: str) -> str:
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            name, kind = key[1:-2].lower(), key[-1]
            source = {"i": self.request, "o": self.response, "e": os.environ}.get(kind)
            if source is not None:
                return source.get(name if kind != "e" else key[1:-2], "-")
        return "-"


def access_line(fmt: str, scope: dict[str, Any], status: int, response_headers: list[tuple[bytes, bytes]],
                sent: int, seconds: float, now: float | None = None) -> str:
    """One access log line in gunicorn's atoms (``access_log_format``)."""
    request = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    response = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response_headers}
    client = scope.get("client")
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope.get("path", "")
    target = path + ("?" + query if query else "")
    protocol = f"HTTP/{scope.get('http_version', '1.1')}"
    method = scope.get("method", "GET" if scope.get("type") == "websocket" else "-")
    stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    atoms = {
        "h": client[0] if client else "-",
        "l": "-",
        "u": "-",
        "t": stamp,
        "r": f"{method} {target} {protocol}",
        "m": method,
        "U": path,
        "q": query,
        "H": protocol,
        "s": str(status) if status else "-",
        "B": str(sent),
        "b": str(sent) if sent else "-",
        "f": request.get("referer", "-"),
        "a": request.get("user-agent", "-"),
        "T": str(int(seconds)),
        "D": str(int(seconds * 1_000_000)),
        "M": str(int(seconds * 1000)),
        "L": f"{seconds:.6f}",
        "p": f"<{os.getpid()}>",
    }
    try:
        return fmt % _Atoms(atoms, request, response)
    except (TypeError, ValueError, KeyError) as exc:  # a bad format must not fail requests
        return f"{atoms['h']} \"{atoms['r']}\" {status} {sent} (bad access_log_format: {exc})"


class AccessLog:
    """Logs one line per HTTP request, once its response is complete (or the app gave up on it)."""

    def __init__(self, app: App, fmt: str) -> None:
        self.app, self.fmt = app, fmt

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        state: dict[str, Any] = {"status": 0, "headers": [], "sent": 0, "logged": False}

        async def logging_send(message: dict[str, Any]) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                state["status"], state["headers"] = message.get("status", 0), list(message.get("headers", []))
            elif kind == "http.response.body":
                state["sent"] += len(message.get("body", b""))
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                self._log(scope, state, start)

        try:
            await self.app(scope, receive, logging_send)
        except BaseException:
            if not state["status"]:
                state["status"] = 500  # what uvicorn answers for an app that raised before answering
            raise
        finally:
            self._log(scope, state, start)  # no complete response: logged with what was sent

    def _log(self, scope: dict[str, Any], state: dict[str, Any], start: float) -> None:
        if state["logged"]:
            return
        state["logged"] = True
        status = state["status"]  # 0: no answer (the client left, or the request was cut off)
        line = access_line(self.fmt, scope, status, state["headers"], state["sent"], time.monotonic() - start)
        log.event("access", line, request_path=scope.get("path", ""), status=status or None)


def wrap(app: App, options: HttpOptions) -> App:
    """The app behind the front line's middleware (innermost first: the access log sees the real client)."""
    if options.access_log:
        app = AccessLog(app, options.access_log_format)
    if options.proxy_headers:
        app = ProxyHeaders(app, options.forwarded_allow_ips)
    return app
