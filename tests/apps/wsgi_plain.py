"""A plain WSGI test app, wrapped in ``wsgiref.validate.validator`` so that every request checks PEP 3333.

``POST /upload?how=read|readline|iter|multipart`` answers ``{"size", "sha256"}`` of the body (or of the form's
``file`` part) as the app read it; ``POST /hold`` reads its body and records in ``$WSGI_TEST_DIR`` what the read
raised; ``GET /stream?id=I`` yields 10 blocks, each after ``/ack?id=I&n=N`` said the one before arrived (run
with one worker); ``GET /endless?id=I`` yields 64 KiB blocks until the client leaves and records its ``close()``.
"""

import hashlib
import json
import os
import threading
import time
import wsgiref.validate
from urllib.parse import parse_qs

import multipart

DIR = os.environ.get("WSGI_TEST_DIR", "/tmp")
ACKS: dict[str, threading.Event] = {}
LOCK = threading.Lock()


def ack_event(key):
    with LOCK:
        return ACKS.setdefault(key, threading.Event())


def record(name, text):
    with open(os.path.join(DIR, name), "a") as fh:
        fh.write(text + "\n")


def digest(stream, how):
    h, size = hashlib.sha256(), 0
    if how == "read":
        while chunk := stream.read(65536):
            h.update(chunk)
            size += len(chunk)
    elif how == "readline":
        while line := stream.readline(1000):
            h.update(line)
            size += len(line)
    else:
        for line in stream:
            h.update(line)
            size += len(line)
    return {"size": size, "sha256": h.hexdigest()}


def json_response(start_response, data, status="200 OK"):
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def router(environ, start_response):
    path, query = environ["PATH_INFO"], {k: v[0] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    if path == "/upload":
        how = query.get("how", "read")
        if how == "multipart":
            _forms, files = multipart.parse_form_data(environ, strict=True, disk_limit=2**30)
            part = files["file"]
            part.file.seek(0)
            return json_response(start_response, digest(part.file, "read"))
        return json_response(start_response, digest(environ["wsgi.input"], how))
    if path == "/hold":
        record("hold-started", "reading")
        try:
            digest(environ["wsgi.input"], "read")
            record("hold", "complete")
        except OSError as exc:
            record("hold", f"{type(exc).__module__}.{type(exc).__name__}")
            raise
        return json_response(start_response, {"ok": True})
    if path == "/ack":
        ack_event(f"{query['id']}-{query['n']}").set()
        return json_response(start_response, {"ok": True})
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return blocks(query["id"], float(query.get("gap", "0")))
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless(query["id"])
    if path.startswith("/environ"):
        keep = ("PATH_INFO", "SCRIPT_NAME", "QUERY_STRING", "HTTP_X_MULTI", "CONTENT_LENGTH", "wsgi.input_terminated")
        return json_response(start_response, {k: environ.get(k) for k in keep})
    return json_response(start_response, {"pid": os.getpid()})


def blocks(stream_id, gap):
    """Block N is only produced once the client said it received block N-1: held-back blocks end the wait."""
    for n in range(10):
        if n and not ack_event(f"{stream_id}-{n - 1}").wait(20):
            yield b"NOACK\n"
            return
        time.sleep(gap)
        yield f"block {n}\n".encode()


class Endless:
    def __init__(self, stream_id):
        self.id, self.produced = stream_id, 0

    def __iter__(self):
        while True:
            self.produced += 1
            yield b"x" * 65536

    def close(self):
        record(f"endless-{self.id}", f"closed after {self.produced}")


app = wsgiref.validate.validator(router)
