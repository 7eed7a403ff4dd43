"""A WSGI app for PEP 3333 through a real pool, on either WSGI engine.

``/environ`` (checked by ``wsgiref.validate``) answers the environ's strings and what the other keys are;
``/chunked`` reads its body whole; ``/write`` mixes ``write()`` and the iterable; ``/exc-before`` replaces an
unsent status with ``exc_info``; ``/exc-after`` calls ``start_response`` with ``exc_info`` after a ``write()``
(which must re-raise); ``/raise-mid?id=I`` raises after its first block and records each ``close()`` in
``$WSGI_TEST_DIR``; ``/raise`` raises before ``start_response``; ``/file`` is this file through ``wsgi.file_wrapper``.
"""

import json
import os
import sys
import wsgiref.validate

DIR = os.environ.get("WSGI_TEST_DIR", "/tmp")


def record(name, text):
    with open(os.path.join(DIR, name), "a") as fh:
        fh.write(text + "\n")


def json_response(start_response, data):
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def describe(environ, start_response):
    strings = {k: v for k, v in environ.items() if isinstance(v, str)}
    kinds = {
        "wsgi.version": list(environ["wsgi.version"]),
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "run_once": environ["wsgi.run_once"],
        "input_terminated": environ.get("wsgi.input_terminated"),
        "errors_writes": callable(getattr(environ["wsgi.errors"], "write", None)),
        "body": environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode("latin-1"),
    }
    return json_response(start_response, {"strings": strings, "kinds": kinds})


def chunked(environ, start_response):
    data = b""
    while part := environ["wsgi.input"].read(4):  # the validator wants a size; small, to read in pieces
        data += part
    return json_response(start_response, {"size": len(data), "content_length": environ.get("CONTENT_LENGTH")})


def write_then_iterable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"a")
    write(b"b")
    return [b"c", b"d"]


VALIDATED = {"/environ": describe, "/chunked": chunked, "/write": write_then_iterable}


def exc_before(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("before the body")
    except ValueError:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced"]


def exc_after(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    write(b"partial")
    try:
        raise ValueError("after the body began")
    except ValueError:
        start_response("500 Internal Server Error", [], sys.exc_info())  # re-raises: too late to change
    return [b"never"]


class RaiseMid:
    def __init__(self, stream_id):
        self.id, self.n = stream_id, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        if self.n > 1:
            raise RuntimeError("mid-response failure")
        return b"first block\n"

    def close(self):
        record(f"close-{self.id}", "closed")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    validated = next((name for name in VALIDATED if path.startswith(name) or path.startswith("/app" + name)), None)
    if validated is not None:  # /app/environ too: a path that starts with root_path, which must stay as it is
        return wsgiref.validate.validator(VALIDATED[validated])(environ, start_response)
    if path == "/exc-before":
        return exc_before(environ, start_response)
    if path == "/exc-after":
        return exc_after(environ, start_response)
    if path == "/raise-mid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return RaiseMid(environ["QUERY_STRING"].partition("=")[2])
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 1000)
    if path == "/raise":
        raise LookupError("raised before start_response")
    return json_response(start_response, {"pid": os.getpid()})
