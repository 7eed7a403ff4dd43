"""The throughput app, ASGI (``app``) and WSGI (``wsgi``): ``/`` hello world, ``/json`` serialises ~20 keys,
``/wait`` waits 20 ms (``asyncio.sleep`` / ``time.sleep``, an I/O wait) then answers hello."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from bench.apps.mark import mark

HELLO = b"Hello, world!"
PAYLOAD = {f"key_{i:02d}": {"id": i, "name": f"item-{i}", "ok": i % 2 == 0, "score": i * 1.5} for i in range(20)}
WAIT_SECONDS = 0.020

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    mark()
    path = scope["path"]
    ctype = b"text/plain"
    body = HELLO
    if path == "/json":
        body, ctype = json.dumps(PAYLOAD).encode(), b"application/json"
    elif path == "/wait":
        await asyncio.sleep(WAIT_SECONDS)
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    mark()
    path = environ.get("PATH_INFO", "/")
    ctype = "text/plain"
    body = HELLO
    if path == "/json":
        body, ctype = json.dumps(PAYLOAD).encode(), "application/json"
    elif path == "/wait":
        time.sleep(WAIT_SECONDS)
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]
