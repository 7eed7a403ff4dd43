"""An ASGI app for the front-line tests: who the client is, bodies, errors and a WebSocket echo.

``/ws?hold=DIR`` holds the WebSocket's opening handshake: it creates DIR/arrived, then accepts once DIR/go exists.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs


async def _json(send: Any, data: dict[str, Any], status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _who(scope: dict[str, Any]) -> dict[str, Any]:
    client = scope.get("client")
    return {"pid": os.getpid(), "generation": int(os.environ.get("COREPOOL_GENERATION", "0")),
            "client": client[0] if client else None, "scheme": scope.get("scheme"),
            "root_path": scope.get("root_path", ""), "path": scope.get("path")}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    path = scope["path"].removeprefix(scope.get("root_path", ""))
    if path == "/boom":
        raise ValueError("asgi view failed on purpose")
    if path == "/body":  # read the whole body, then say how much came and whether the client left
        size, disconnected = 0, False
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                print(f"body: disconnect after {size} bytes", flush=True)
                break
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if not disconnected:
            await _json(send, {"size": size, **_who(scope)})
        return
    await _json(send, _who(scope))


async def _websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert (await receive())["type"] == "websocket.connect"
    hold = parse_qs(scope.get("query_string", b"").decode()).get("hold")
    if hold:
        (Path(hold[0]) / "arrived").touch()
        while not (Path(hold[0]) / "go").exists():
            await asyncio.sleep(0.01)
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(_who(scope))})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text"), "bytes": message.get("bytes")})
