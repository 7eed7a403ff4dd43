"""A WSGI test app: GET / answers the worker's pid; GET /stuck blocks its thread forever."""

import json
import os
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/stuck":
        time.sleep(3600)
    body = json.dumps({"pid": os.getpid(), "interface": "wsgi"}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
