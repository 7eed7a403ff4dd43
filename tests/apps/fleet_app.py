"""An ASGI app standing in for one host's service in the many-hosts tests (tests/fleet, test_health, and
test_redis_broadcast).

VERSION is rewritten by the fleet test when it "deploys" a new version (a copy of this file in a directory the
pool imports from). $FLEET_HOST names the host in every answer; the import waits until the file $FLEET_BOOT_FLAG
exists (when set).

GET /                  → {"pid", "version", "host"}
GET /broadcast?id=X    → broadcasts {"id": X} on topic "fleet": {"pid", "ok"}
GET /received          → {"pid", "ids": every id this worker received on "fleet", in order}
GET /hold?flag=PATH    → answers {"pid", ...} once PATH exists (an in-flight request, for at most 60 s)
"""

import asyncio
import json
import os
import time
from urllib.parse import parse_qs

import corepool

VERSION = "1"
HOST = os.environ.get("FLEET_HOST", "?")
_flag = os.environ.get("FLEET_BOOT_FLAG")
_deadline = time.monotonic() + 60
while _flag and not os.path.exists(_flag) and time.monotonic() < _deadline:
    time.sleep(0.02)

_received: list[str] = []


@corepool.on_message("fleet")
def _keep(data):
    _received.append(str(data["id"]))


async def _answer(send, payload):
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
    path, pid = scope["path"], os.getpid()
    if path == "/broadcast":
        await _answer(send, {"pid": pid, "ok": corepool.broadcast("fleet", {"id": query["id"]})})
    elif path == "/received":
        await _answer(send, {"pid": pid, "ids": _received})
    elif path == "/hold":
        deadline = time.monotonic() + 60
        while not os.path.exists(query["flag"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await _answer(send, {"pid": pid, "version": VERSION, "host": HOST})
    else:
        await _answer(send, {"pid": pid, "version": VERSION, "host": HOST})
