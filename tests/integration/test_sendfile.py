"""Files the kernel sends (issue 17 item 4): ASGI's http.response.pathsend and WSGI's wsgi.file_wrapper (Django's
FileResponse, Flask's send_file) with sendfile(2) on plain sockets, a read loop under TLS; a 100 MB file arrives
whole, and costs the worker less CPU than the read loop (printed, not asserted: a timing)."""

from __future__ import annotations

import hashlib
import http.client
import os
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_tls import client_context, make_cert

SIZE = 100 * 1024 * 1024


@pytest.fixture
def mode() -> str:
    return "preload"


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("sendfile") / "big.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(SIZE // (1024 * 1024)):
            block = hashlib.sha256(str(i).encode()).digest() * 32768  # 1 MiB, not all alike
            out.write(block)
            digest.update(block)
    return path, digest.hexdigest()


def download(port: int, path: str, tls: Any = None) -> tuple[int, str, dict[str, str]]:
    conn: http.client.HTTPConnection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=tls)
                                        if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=60))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        digest, size = hashlib.sha256(), 0
        while block := response.read(1024 * 1024):
            digest.update(block)
            size += len(block)
        return size, digest.hexdigest(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def worker_cpu(pool: Any) -> float:
    total = 0.0
    for pid in pool.pids():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@pytest.mark.parametrize(("app", "path"), [("pathsend_asgi:app", "/"), ("wsgi_django:app", "/download"),
                                           ("wsgi_flask:app", "/download")])  # fmt: skip
def test_a_100_mb_file_arrives_whole_through_sendfile(pool_factory: Any, big_file: tuple[Path, str], app: str,
                                                      path: str) -> None:
    file, digest = big_file
    pool = pool_factory(app, workers=1, env={"FILE_TO_SEND": str(file), "WSGI_TEST_DIR": str(file.parent)}).start()
    before = worker_cpu(pool)
    size, got, headers = download(pool.port, path)
    sent_cpu = worker_cpu(pool) - before
    assert (size, got) == (SIZE, digest)
    assert headers.get("content-length") == str(SIZE)
    if app.startswith("pathsend"):
        before = worker_cpu(pool)
        assert download(pool.port, "/read")[:2] == (SIZE, digest)
        print(f"100 MB: worker CPU {sent_cpu * 1000:.0f} ms with sendfile, "
              f"{(worker_cpu(pool) - before) * 1000:.0f} ms read in blocks")
    assert download(pool.port, path)[:2] == (SIZE, digest)  # and again, on a fresh connection


def test_under_tls_the_file_is_read_and_written(pool_factory: Any, big_file: tuple[Path, str],
                                               tmp_path: Path) -> None:
    file, digest = big_file
    cert, key = make_cert(tmp_path, "first")
    pool = pool_factory("wsgi_django:app", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), workers=1,
                        env={"FILE_TO_SEND": str(file)}).start()  # fmt: skip
    assert download(pool.port, "/download", tls=client_context(cert))[:2] == (SIZE, digest)


def test_a_client_that_leaves_mid_file_costs_nothing_more(pool_factory: Any, big_file: tuple[Path, str]) -> None:
    import socket

    file, digest = big_file
    pool = pool_factory("pathsend_asgi:app", workers=1, env={"FILE_TO_SEND": str(file)}).start()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", pool.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)  # a little of it, then gone
    assert download(pool.port, "/")[:2] == (SIZE, digest)
    assert "Traceback" not in pool.log()
