"""An ASGI app whose deploy is steered by the file named in $CANARY_FILE, read at import time (per generation):

good (or no file) → answers 200 after BASE seconds ($CANARY_BASE, default 0.05); error → answers 500 to every
request, at once; slow → answers 200 after 5 x BASE seconds. The 200 body is {"pid", "version"}.
"""

import asyncio
import json
import os

BASE = float(os.environ.get("CANARY_BASE", "0.05"))

_file = os.environ.get("CANARY_FILE")
VERSION = "good"
if _file and os.path.exists(_file):
    with open(_file) as fh:
        VERSION = fh.read().strip() or "good"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    if VERSION == "error":
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"broken deploy\n"})
        return
    await asyncio.sleep(BASE * (5 if VERSION == "slow" else 1))
    body = json.dumps({"pid": os.getpid(), "version": VERSION}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
