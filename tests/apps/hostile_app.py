"""Apps for the hostile-client suite: each answers with exactly what it was given, so a test can tell what a
request became by the time it reached the app, and counts its calls (``/__calls``), so a test can tell that a
refused request never reached it.

The answer is JSON: ``{"app": MARK, "method", "path", "query", "headers": [[name, value], ...], "body"}``, names
lower-case, values and body decoded as latin-1 (byte for byte).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

MARK = "corepool-hostile-app"
_calls = [0]


def _answer(method: str, path: str, query: str, headers: list[list[str]], body: bytes) -> bytes:
    return json.dumps({"app": MARK, "method": method, "path": path, "query": query, "headers": headers,
                       "body": body.decode("latin-1")}).encode()


async def asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    if scope["path"] == "/__calls":
        data = json.dumps({"calls": _calls[0]}).encode()
    else:
        _calls[0] += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        headers = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        data = _answer(scope["method"], scope["path"], scope["query_string"].decode("latin-1"), headers, body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/__calls":
        data = json.dumps({"calls": _calls[0]}).encode()
    else:
        _calls[0] += 1
        headers = []
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                headers.append([key[5:].replace("_", "-").lower(), value])
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                headers.append([key.replace("_", "-").lower(), value])
        body = environ["wsgi.input"].read()
        data = _answer(environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"], headers, body)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
