"""An ASGI app for the HTTP/2 tests: ``/`` says who answered and how (``http_version``, the fields it got);
``/echo`` sends the request body back as it comes; ``/big?size=N`` answers N bytes in 16 KiB blocks;
``/slow?seconds=S`` answers after S seconds; ``/boom`` fails."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    if path == "/boom":
        raise ValueError("h2 view failed on purpose")
    if path == "/echo":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x")]})
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/big":
        size = int(query["size"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        block = b"x" * 16384
        while size > 0:
            piece = block[:size]
            size -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": size > 0})
        return
    if path == "/slow":
        await asyncio.sleep(float(query["seconds"]))
    body = json.dumps({
        "pid": os.getpid(), "generation": int(os.environ.get("COREPOOL_GENERATION", "0")),
        "http_version": scope["http_version"], "scheme": scope["scheme"], "method": scope["method"],
        "path": path, "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
    }).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": body})
