"""Which engine serves WSGI, as `check` and `serve` say it: granian where it can serve (the pinned version
installed, cleartext HTTP/1.1), the bridge otherwise, and `wsgi_engine = "granian"` that cannot serve a start
error (exit 2, one line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from corepool.engines import granian_wsgi
from tests.integration.conftest import Pool
from tests.integration.test_bad_input import corepool, one_line
from tests.support import APPS, get_json

needs_granian = pytest.mark.skipif(granian_wsgi.unusable() is not None, reason=str(granian_wsgi.unusable()))


def check(*flags: str) -> tuple[int, str]:
    out = corepool("check", "wsgiapp:app", "--app-dir", str(APPS), *flags)
    return out.returncode, out.stdout + out.stderr


@needs_granian
def test_check_names_the_engine_auto_picks() -> None:
    assert "(wsgi on granian's Rust worker)" in check("--no-http2")[1]
    assert "(wsgi on granian's Rust worker)" in check()[1]  # the defaults: HTTP/2 is not offered on its sockets
    assert "(wsgi on the bridge" in check("--no-http2", "--wsgi-engine", "bridge")[1]


@needs_granian
def test_granian_with_tls_is_a_start_error_of_one_line(tmp_path: Path) -> None:
    from tests.integration.test_tls import make_cert

    if shutil.which("openssl") is None:
        pytest.skip("needs openssl (scripts/setup --test)")
    cert, key = make_cert(tmp_path, "granian")
    out = corepool("check", "wsgiapp:app", "--app-dir", str(APPS), "--wsgi-engine", "granian", "--ssl-certfile",
                   str(cert), "--ssl-keyfile", str(key))
    assert out.returncode == 2
    assert one_line(out).startswith("corepool: error: wsgi_engine: granian cannot serve: ssl_certfile is set"), \
        out.stderr


@needs_granian
def test_serve_says_which_engine_serves_wsgi_and_why(tmp_path: Path) -> None:
    pool = Pool(tmp_path, "wsgiapp:app", "--no-http2", workers=1, wsgi_engine="auto").start()
    try:
        assert get_json(pool.port)
        lines = [line for line in pool.log().splitlines() if "WSGI apps are served by" in line]
        assert len(lines) == 1 and "granian's Rust worker: granian 2.8.9 is installed (wsgi_engine auto)" in lines[0]
    finally:
        pool.close()
