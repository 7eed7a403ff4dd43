"""The bundled demo app (ASGI, no dependencies): ``corepool serve corepool.demo:app``.

* ``GET /``            → ``{"pid": <worker pid>, "generation": N, "slot": S}``
* ``POST /broadcast``  → broadcasts the request body (JSON or text) to every other worker
* ``GET /messages``    → the broadcasts this worker received: ``curl -X POST localhost:8000/broadcast -d hi``, then
  ``curl localhost:8000/messages`` a few times and watch each other worker show it
* ``GET /slow?seconds=S`` → answers after S seconds (to watch a graceful stop or reload finish it)
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from typing import Any
from urllib.parse import parse_qs

import corepool.bus as bus

_received: deque[dict[str, Any]] = deque(maxlen=100)


@bus.on_message("demo")
def _remember(data: Any) -> None:
    _received.append(data)


def _identity() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "generation": int(os.environ.get("COREPOOL_GENERATION", "0")),
        "slot": int(os.environ.get("COREPOOL_SLOT", "0")),
    }


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(send: Any, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The demo ASGI application."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if path == "/" and method in ("GET", "HEAD"):
        await _send_json(send, 200, _identity())
    elif path == "/broadcast" and method == "POST":
        raw = await _body(receive)
        try:
            note = json.loads(raw) if raw else None
        except ValueError:
            note = raw.decode(errors="replace")
        sent = bus.broadcast("demo", {"from": os.getpid(), "note": note})
        await _send_json(send, 202 if sent else 503, {**_identity(), "sent": sent})
    elif path == "/messages" and method == "GET":
        await _send_json(send, 200, {**_identity(), "received": list(_received)})
    elif path == "/slow" and method == "GET":
        query = parse_qs(scope.get("query_string", b"").decode())
        seconds = float(query.get("seconds", ["1"])[0])
        await asyncio.sleep(min(seconds, 600.0))
        await _send_json(send, 200, {**_identity(), "slept": seconds})
    else:
        await _send_json(send, 404, {"error": f"no route for {method} {path}"})
