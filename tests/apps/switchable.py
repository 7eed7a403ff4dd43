"""An ASGI test app whose import is steered by the file named in $SWITCH_FILE, read at import time:

ok (or no file) → imports fine; broken → raises on import; slow:S → sleeps S seconds while importing;
exit → the process exits during import, and a worker forked from an already imported app exits at its
lifespan startup (so crash loops happen in preload mode too); hang → a new worker hangs in its lifespan startup.

GET / answers {"pid", "generation", "version" (the switch file's content at import), "gc_frozen" (objects
gc.freeze() froze in this process), "notify_socket"}; GET /block blocks the event loop forever; GET /slow?s=S
answers after S s.
"""

import asyncio
import gc
import json
import os
import time

_switch = os.environ.get("SWITCH_FILE")


def _current_mode():
    if _switch and os.path.exists(_switch):
        with open(_switch) as fh:
            return fh.read().strip()
    return "ok"


_mode = _current_mode()
if _mode == "broken":
    raise RuntimeError("switchable: broken on purpose")
if _mode.startswith("slow:"):
    time.sleep(float(_mode.split(":", 1)[1]))
if _mode == "exit":
    os._exit(7)

VERSION = _mode


async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup" and _current_mode() == "exit":
                    os._exit(7)
                if message["type"] == "lifespan.startup" and _current_mode() == "hang":
                    time.sleep(3600)  # a worker that never becomes ready, even when forked from a loader
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        return
    path = scope["path"]
    if path == "/block":
        while True:
            time.sleep(3600)  # a wedged event loop: no pongs, no requests
    if path == "/slow":
        seconds = float(scope["query_string"].decode().partition("=")[2] or 1)
        await asyncio.sleep(seconds)
    body = json.dumps(
        {
            "pid": os.getpid(),
            "generation": int(os.environ.get("COREPOOL_GENERATION", 0)),
            "version": VERSION,
            "gc_frozen": gc.get_freeze_count(),
            "notify_socket": os.environ.get("NOTIFY_SOCKET"),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
