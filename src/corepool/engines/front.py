"""ASGI middleware of the front line: proxy headers (with unix-socket peers trusted) and the access log.

Both wrap every HTTP route, ASGI or WSGI (the WSGI bridge builds ``REMOTE_ADDR`` and ``wsgi.url_scheme`` from
the scope these set).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from typing import Any

from corepool import log
from corepool.settings import HttpOptions

App = Callable[..., Any]


class ProxyHeaders:
    """``X-Forwarded-For``/``X-Forwarded-Proto`` from trusted proxies, with uvicorn's and gunicorn's semantics for
    ``forwarded_allow_ips`` (addresses, networks, or ``*``): the client is the rightmost ``X-Forwarded-For``
    entry that is not itself a trusted proxy (with ``*``: the leftmost). A peer on a unix socket is always a
    trusted proxy: only the socket's owner and group can connect to it. (uvicorn sees no address on a unix
    socket, so it never trusts one unless told ``*``, and then it trusts every entry the client made up.)"""

    def __init__(self, app: App, forwarded_allow_ips: str) -> None:
        self.app = app
        entries = [e.strip() for e in forwarded_allow_ips.split(",") if e.strip()]
        self.trust_all = "*" in entries
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*" and _is_network(e)]

    def trusted(self, host: str) -> bool:
        if self.trust_all:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            client = scope.get("client")
            if (client is None and _on_unix_socket(scope)) or (client is not None and self.trusted(client[0])):
                self._apply(scope)
        await self.app(scope, receive, send)

    def _apply(self, scope: dict[str, Any]) -> None:
        proto: str | None = None
        forwarded: list[str] = []
        for name, value in scope.get("headers", []):
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
            elif name == b"x-forwarded-for":
                forwarded += [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
        if proto in ("http", "https", "ws", "wss"):
            scope["scheme"] = proto.replace("http", "ws") if scope["type"] == "websocket" else proto
        if forwarded:
            chain = forwarded if self.trust_all else list(reversed(forwarded))
            host = next((h for h in chain if not self.trusted(_host_of(h))), forwarded[0])
            scope["client"] = (_host_of(host), 0)


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


def _host_of(entry: str) -> str:
    """An X-Forwarded-For entry without a port: ``1.2.3.4``, ``1.2.3.4:5``, ``[::1]:5`` or ``::1``."""
    if entry.startswith("["):
        return entry[1:entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def _on_unix_socket(scope: dict[str, Any]) -> bool:
    server = scope.get("server")
    return server is None or server[1] is None


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
