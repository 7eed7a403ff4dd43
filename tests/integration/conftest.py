"""A real pool in a subprocess (``python -m corepool serve``) on a free 127.0.0.1 port.

WSGI pools run on the bridge unless a test asks for another ``wsgi_engine``; a module whose tests must hold on
both WSGI engines overrides the ``wsgi_engine`` fixture with params :data:`WSGI_ENGINES` through
:func:`engine_param` (tests/conftest.py leaves out the ASGI cases of it: ASGI runs on uvicorn whatever the
setting says).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import APPS, free_port


class Pool:
    def __init__(self, tmp: Path, app: str, *flags: str, workers: int | None = 2, env: dict[str, str] | None = None,
                 wsgi_engine: str | None = "bridge"):
        self.tmp = tmp
        self.wsgi_engine = wsgi_engine
        self.port = free_port()
        self.control = str(tmp / "control.sock")
        self.log_path = tmp / "pool.log"
        argv = [sys.executable, "-m", "corepool", "serve", app, "--bind", f"127.0.0.1:{self.port}",
                "--control", self.control, "--app-dir", str(APPS), *flags]
        if workers is not None:
            argv += ["--workers", str(workers)]
        if wsgi_engine is not None:
            argv += ["--wsgi-engine", wsgi_engine]
        if wsgi_engine == "granian":
            argv += ["--no-http2"]  # granian serves HTTP/1.1 only (engines.bridge_only)
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Pool:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close(), it outlives this call
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if wait:
            self.wait_running()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "corepool", *args, "--control", self.control],
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, Any]:
        out = self.ctl("status", "--json", timeout=10)
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def pids(self, state: str = "ready") -> set[int]:
        return {w["pid"] for w in self.status()["workers"] if w["state"] == state}

    def wait_running(self, timeout: float = 30) -> None:
        self.wait_for(lambda s: s["phase"] == "running" and s["workers_ready"] == s["workers_wanted"], timeout)

    def wait_for(self, predicate: Any, timeout: float = 30, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"pool exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.control):
                try:
                    last = self.status()
                except (AssertionError, ValueError):
                    last = {}
                if last and predicate(last):
                    return last
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or predicate}; last status {last}\n{self.log()}")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture(params=["preload", "lazy"])
def mode(request: pytest.FixtureRequest) -> str:
    """Every pool test runs in both modes: preload (a loader per generation) and lazy (import per worker)."""
    return str(request.param)


WSGI_ENGINES = ["bridge", "granian"]


def engine_param(request: pytest.FixtureRequest) -> str:
    """A ``wsgi_engine`` fixture param; granian's is skipped where granian cannot serve (scripts/setup --test
    installs corepool[granian], so CI runs both)."""
    engine = str(request.param)
    if engine == "granian":
        from corepool.engines import granian_wsgi

        problem = granian_wsgi.unusable()
        if problem is not None:
            pytest.skip(f"{problem} (scripts/setup --test installs it)")
    return engine


@pytest.fixture
def wsgi_engine() -> str:
    """The WSGI engine of the pools a test makes: the bridge, unless the module asks for both."""
    return "bridge"


@pytest.fixture
def pool_factory(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Pools in ``mode``, on the ``wsgi_engine`` the test asks for (a test that does not ask gets the bridge, and
    is not run once per engine)."""
    pools: list[Pool] = []
    wsgi_engine = request.getfixturevalue("wsgi_engine") if "wsgi_engine" in request.fixturenames else "bridge"

    def make(app: str, *flags: str, **kw: Any) -> Pool:
        kw.setdefault("wsgi_engine", wsgi_engine)
        pool = Pool(tmp_path / f"pool{len(pools)}", app, "--mode", mode, *flags, **kw)
        pool.tmp.mkdir()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
