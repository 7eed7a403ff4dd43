"""A Flask test app: uploads (``get_data``, ``files``), a streamed response and a server-sent-events route that
wait for the client's acknowledgement of each block (``/ack``; run with one worker)."""

import hashlib
import os
import threading

from flask import Flask, Response, request, stream_with_context

app = Flask(__name__)
ACKS: dict[str, threading.Event] = {}
LOCK = threading.Lock()


def ack_event(key):
    with LOCK:
        return ACKS.setdefault(key, threading.Event())


def record(name, text):
    with open(os.path.join(os.environ["WSGI_TEST_DIR"], name), "a") as fh:
        fh.write(text + "\n")


def summary(data):
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@app.post("/upload")
def upload():
    return summary(request.get_data())


@app.post("/files")
def files():
    return summary(request.files["file"].read())


@app.post("/hold")
def hold():
    record("flask-hold-started", "reading")
    try:
        request.get_data()
    except OSError as exc:
        record("flask-hold", f"{type(exc).__module__}.{type(exc).__name__}")
        raise
    return {"ok": True}


@app.get("/ack")
def ack():
    ack_event(f"{request.args['id']}-{request.args['n']}").set()
    return {"ok": True}


def acked(stream_id, render):
    for n in range(10):
        if n and not ack_event(f"{stream_id}-{n - 1}").wait(20):
            yield render("NOACK")
            return
        yield render(f"block {n}")


@app.get("/stream")
def stream():
    stream_id = request.args["id"]  # read inside the generator too: stream_with_context keeps the request

    def generate():
        yield from acked(request.args["id"], lambda text: text + "\n")

    return Response(stream_with_context(generate()), mimetype="text/plain", headers={"X-Id": stream_id})


@app.get("/sse")
def sse():
    return Response(acked(request.args["id"], lambda text: f"data: {text}\n\n"), mimetype="text/event-stream")


@app.get("/download")
def download():
    """A file (FILE_TO_SEND) as Flask serves one: send_file, through wsgi.file_wrapper when there is one."""
    from flask import send_file

    return send_file(os.environ["FILE_TO_SEND"], mimetype="application/octet-stream")
