"""An ASGI app that sends FILE_TO_SEND with ASGI's http.response.pathsend (``/``) or read in blocks (``/read``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    path = os.environ["FILE_TO_SEND"]
    size = os.path.getsize(path)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(size).encode())]})  # fmt: skip
    if scope["path"] == "/read" or "http.response.pathsend" not in scope.get("extensions", {}):
        with open(path, "rb") as f:
            while block := f.read(256 * 1024):
                await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.pathsend", "path": path})
