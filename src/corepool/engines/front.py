"""Who the client is behind a proxy (:class:`ProxyTrust`, unix-socket peers trusted), and the access log's line
in gunicorn's atoms (:func:`access_line`). The HTTP/1.1 protocol applies both itself; :class:`ProxyHeaders` is
the middleware form, for WebSockets (the WSGI bridge builds ``REMOTE_ADDR`` and ``wsgi.url_scheme`` from the
scope these set).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from typing import Any

App = Callable[..., Any]


class ProxyTrust:
    """Which peers may set the client address and scheme: ``forwarded_allow_ips`` with uvicorn's and gunicorn's
    semantics (addresses, networks, or ``*``), and every peer on a unix socket (only the socket's owner and group
    can connect to it; uvicorn sees no address there, so it never trusts one unless told ``*``, and then it trusts
    every entry the client made up). A peer's verdict is decided once, when it connects, and remembered."""

    def __init__(self, forwarded_allow_ips: str) -> None:
        entries = [e.strip() for e in forwarded_allow_ips.split(",") if e.strip()]
        self.trust_all = "*" in entries
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries if e != "*" and _is_network(e)]
        self._verdicts: dict[str, bool] = {}

    def trusted(self, host: str) -> bool:
        if self.trust_all:
            return True
        verdict = self._verdicts.get(host)
        if verdict is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                verdict = False
            else:
                verdict = any(address in network for network in self.networks)
            if len(self._verdicts) < 4096:  # bounded: X-Forwarded-For entries are the client's to choose
                self._verdicts[host] = verdict
        return verdict

    def peer_trusted(self, client: tuple[str, int] | None) -> bool:
        """A connection's peer (None: a unix socket)."""
        return client is None or self.trusted(client[0])

    def apply(self, scope: dict[str, Any], proto: bytes | None, forwarded_for: list[bytes]) -> None:
        """Set ``scope``'s scheme and client from a trusted peer's X-Forwarded-Proto and X-Forwarded-For values:
        the client is the rightmost entry that is not itself a trusted proxy (with ``*``: the leftmost)."""
        if proto is not None:
            scheme = proto.decode("latin-1").strip().lower()
            if scheme in ("http", "https", "ws", "wss"):
                scope["scheme"] = scheme.replace("http", "ws") if scope["type"] == "websocket" else scheme
        entries = [h.strip() for v in forwarded_for for h in v.decode("latin-1").split(",") if h.strip()]
        if entries:
            chain = entries if self.trust_all else list(reversed(entries))
            host = next((h for h in chain if not self.trusted(_host_of(h))), entries[0])
            scope["client"] = (_host_of(host), 0)


class ProxyHeaders:
    """ASGI middleware applying :class:`ProxyTrust` (the WebSocket path; HTTP/1.1 requests get it from the
    protocol, which decides trust once per connection)."""

    def __init__(self, app: App, forwarded_allow_ips: str) -> None:
        self.app = app
        self.trust = ProxyTrust(forwarded_allow_ips)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            client = scope.get("client")
            if (client is None and _on_unix_socket(scope)) or (client is not None and self.trust.trusted(client[0])):
                proto, forwarded = None, []
                for name, value in scope.get("headers", []):
                    if name == b"x-forwarded-proto":
                        proto = value
                    elif name == b"x-forwarded-for":
                        forwarded.append(value)
                self.trust.apply(scope, proto, forwarded)
        await self.app(scope, receive, send)


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
