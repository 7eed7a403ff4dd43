"""An ASGI app that floods and counts broadcasts, for tests/integration/test_broadcast.py.

GET /                               → {"pid"}
GET /flood?n=N&size=S&every=E&pause=P&start=I
                                    → broadcast N messages {"i" from I, "pad": S bytes} on topic "flood", sleeping
                                      P s after every E of them; answers {"pid", "sent", "accepted", "refused"}
GET /big?size=S                     → one broadcast of S bytes of data on topic "big": {"pid", "ok", "encoded"}
GET /received                       → {"pid", "flood": count, "flood_in_order": bool, "big": [sizes]}
GET /hold?flag=PATH                 → blocks the event loop (time.sleep) until PATH exists (at most 60 s)
GET /garbage                        → answers {"pid", "sent"}, then writes bytes that are not a message on its channel
GET /rogue?seconds=S                → for S seconds, writes valid broadcasts straight on its channel as fast as it
                                      takes them (bypassing broadcast()'s budget): {"pid", "written"}
"""

import asyncio
import itertools
import json
import os
import time
from urllib.parse import parse_qs

import corepool.bus as bus
from corepool import channel

_flood = []
_big = []


@bus.on_message("flood")
def _count(data):
    _flood.append(data["i"])


@bus.on_message("big")
def _keep(data):
    _big.append(len(data))


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
    if path == "/flood":
        n, size = int(query.get("n", "1")), int(query.get("size", "10"))
        every, pause = int(query.get("every", "0")), float(query.get("pause", "0"))
        accepted, first = 0, int(query.get("start", "0"))
        for i in range(first, first + n):
            accepted += bus.broadcast("flood", {"i": i, "pad": "x" * size})
            if every and (i + 1 - first) % every == 0:
                await asyncio.sleep(pause)
        await _answer(send, {"pid": pid, "sent": n, "accepted": accepted, "refused": n - accepted})
    elif path == "/big":
        data = "y" * int(query["size"])
        encoded = len(channel.encode("broadcast", topic="big", data=data))
        await _answer(send, {"pid": pid, "ok": bus.broadcast("big", data), "encoded": encoded})
    elif path == "/received":
        in_order = all(a < b for a, b in itertools.pairwise(_flood))
        await _answer(send, {"pid": pid, "flood": len(_flood), "flood_in_order": in_order, "big": _big})
    elif path == "/hold":
        deadline = time.monotonic() + 60
        while not os.path.exists(query["flag"]) and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the loop on purpose: this worker reads nothing meanwhile
        await _answer(send, {"pid": pid, "held": True})
    elif path == "/rogue":
        sock = bus._outbox[0].sock
        frame = channel.encode("broadcast", topic="flood", data={"i": 0, "pad": "r" * 100})
        written, end = 0, time.monotonic() + float(query.get("seconds", "3"))
        while time.monotonic() < end:
            try:
                sock.send(frame)
                written += 1
            except BlockingIOError:
                await asyncio.sleep(0)
        await _answer(send, {"pid": pid, "written": written})
    elif path == "/garbage":
        # The answer first: the primary kills this worker as soon as it reads the garbage, and a worker killed
        # before it answered would drop the request (the test wants the answer, then the replacement).
        await _answer(send, {"pid": pid, "sent": True})
        sock = bus._outbox[0].sock  # the worker's end of its channel (private: this app misbehaves on purpose)
        sock.send(b"\x00garbage{not json")
    else:
        await _answer(send, {"pid": pid})
