"""An ASGI app with lifecycle hooks that append what they saw to the file named by HOOKS_LOG."""

import json
import os


def _record(**fields):
    with open(os.environ["HOOKS_LOG"], "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), **fields}) + "\n")


def post_fork(slot, generation):
    _record(hook="post_fork", slot=slot, generation=generation)


def worker_exit(slot, generation):
    _record(hook="worker_exit", slot=slot, generation=generation)


def when_ready(status):
    _record(hook="when_ready", phase=status["phase"], workers=len(status["workers"]))


def on_reload(generation):
    _record(hook="on_reload", generation=generation)


def broken_post_fork(slot, generation):
    raise RuntimeError("cannot reach the database")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"pid": os.getpid()}).encode()})
