"""An ASGI hello app that takes ``$BENCH_IMPORT_SECONDS`` (default 2 s) to import, for the rolling-reload case."""

from __future__ import annotations

import os
import time

from bench.apps.basic import app as _basic_app
from bench.apps.basic import wsgi as _basic_wsgi

IMPORT_SECONDS = float(os.environ.get("BENCH_IMPORT_SECONDS", "2"))
time.sleep(IMPORT_SECONDS)

app = _basic_app
wsgi = _basic_wsgi
