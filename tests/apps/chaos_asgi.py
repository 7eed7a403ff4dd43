"""An ASGI app for the chaos suite: routes that crash, wedge, stall or leak their worker.

Its import is steered by the file named in $CHAOS_SWITCH (read at import time, and at lifespan startup):
ok (or no file) → fine; broken → raises on import; hang → sleeps for ever while importing (boot_timeout);
fail → imports, then answers every request with an exception (500); crash → imports, then every worker exits
at its lifespan startup (a crash loop at boot, in preload mode too).

GET /            → {"pid", "generation", "version"}
GET /kill        → the worker SIGKILLs itself (a request of death: the OOM killer, a kill -9)
GET /segv        → the worker segfaults (a broken C extension: ctypes.string_at(0))
GET /exit        → the worker exits at once (os._exit), for churn
GET /block?s=S   → blocks the event loop for S s (time.sleep in async def)
GET /slow?s=S    → answers after S s (asyncio.sleep)
GET /leak?mb=N   → keeps N more MiB (touched) for the life of the worker, answers its RSS
"""

import asyncio
import ctypes
import json
import os
import signal
import time

_switch = os.environ.get("CHAOS_SWITCH")


def _mode():
    if _switch and os.path.exists(_switch):
        with open(_switch) as fh:
            return fh.read().strip() or "ok"
    return "ok"


VERSION = _mode()
if VERSION == "broken":
    raise RuntimeError("chaos_asgi: broken on purpose")
if VERSION == "hang":
    time.sleep(3600)

_leaked = []


def _query(scope, key, default):
    for part in scope["query_string"].decode().split("&"):
        name, _, value = part.partition("=")
        if name == key and value:
            return float(value)
    return default


def _rss_mib():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup" and _mode() == "crash":
            os._exit(3)
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if VERSION == "fail":
        raise RuntimeError("chaos_asgi: every request fails")
    path = scope["path"]
    extra = {}
    if path == "/kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif path == "/segv":
        ctypes.string_at(0)
    elif path == "/exit":
        os._exit(0)
    elif path == "/block":
        time.sleep(_query(scope, "s", 5.0))
    elif path == "/slow":
        await asyncio.sleep(_query(scope, "s", 1.0))
    elif path == "/leak":
        chunk = bytearray(int(_query(scope, "mb", 1.0) * 1048576))
        for i in range(0, len(chunk), 4096):  # touch every page: resident, not just reserved
            chunk[i] = 1
        _leaked.append(chunk)
        extra["rss_mib"] = round(_rss_mib(), 1)
    body = json.dumps(
        {"pid": os.getpid(), "generation": int(os.environ.get("COREPOOL_GENERATION", 0)), "version": VERSION, **extra}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
