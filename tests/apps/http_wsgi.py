"""A WSGI app for the front-line tests: who the client is, bodies and errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise KeyError("wsgi view failed on purpose")
    data: dict[str, Any] = {
        "pid": os.getpid(), "generation": int(os.environ.get("COREPOOL_GENERATION", "0")),
        "client": environ.get("REMOTE_ADDR"), "scheme": environ["wsgi.url_scheme"],
        "root_path": environ.get("SCRIPT_NAME", ""), "path": path,
    }
    if path == "/body":
        data["size"] = len(environ["wsgi.input"].read())
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
