"""A WSGI app for the chaos suite: GET / answers the worker's pid; GET /slow?s=S waits S s in its thread (a slow
database or upstream API: busy, not dead)."""

import json
import os
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0]))
    body = json.dumps({"pid": os.getpid(), "interface": "wsgi"}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
