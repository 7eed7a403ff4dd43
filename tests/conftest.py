"""Session-wide guard: no test may leave a process behind (issue 8 item 7).

At session start, ``COREPOOL_TEST_SESSION=<uuid>`` is put in ``os.environ``; every process a test starts (pools,
workers, loaders, a sandbox's systemd) inherits it, while processes of other sessions and engineers on the same
machine carry another uuid or none. At the end of the session, any process still carrying this session's marker
(other than pytest itself), and any zombie or stopped child of pytest, fails the session loudly, listed with its
command line, then SIGKILLed. Units started by a sandbox's systemd get systemd's environment, not ours; they die
with the sandbox's systemd, which does carry the marker.

Hypothesis runs without its timing checks everywhere (the per-example deadline and the too_slow health check):
the property tests check decisions, not speed, and a 200 ms deadline fails a pure example that a loaded CI
machine merely paused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("corepool", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("corepool")

MARKER_KEY = "COREPOOL_TEST_SESSION"
GRACE = 10.0  # seconds for processes that are on their way out (a pool draining after its test) to go


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    if not cmdline:  # a zombie has none: show its name
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
            cmdline = text[text.index("(") : text.rindex(")") + 1]
        except (OSError, ValueError):
            cmdline = "?"
    state = _stat(pid)
    return f"pid {pid} state {state[0] if state else '?'} ppid {state[1] if state else '?'}: {cmdline[:200]}"


def leftovers(marker: bytes, me: int) -> list[int]:
    """Processes carrying ``marker`` in their environment, and zombie or stopped children of ``me``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        stat = _stat(pid)
        if stat is None:
            continue
        state, ppid = stat
        if ppid == me and state in ("Z", "T", "t"):
            found.append(pid)
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or not ours to read: another user's process is not a test's
            continue
        if marker in environ.split(b"\0"):
            found.append(pid)
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test parametrized by WSGI engine and by app runs its ASGI apps once: on granian's WSGI engine an ASGI app
    is served as on the bridge's (by uvicorn), so those cases would only repeat the bridge's."""
    keep, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        asgi = any(isinstance(v, str) and "asgi" in v for k, v in params.items() if k != "wsgi_engine")
        (dropped if asgi and params.get("wsgi_engine") == "granian" else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind() -> Iterator[None]:
    token = uuid.uuid4().hex
    previous = os.environ.get(MARKER_KEY)
    os.environ[MARKER_KEY] = token
    yield
    marker = f"{MARKER_KEY}={token}".encode()
    me = os.getpid()
    deadline = time.monotonic() + GRACE
    left = leftovers(marker, me)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(marker, me)
    if previous is None:
        os.environ.pop(MARKER_KEY, None)
    else:
        os.environ[MARKER_KEY] = previous
    if left:
        listing = "\n".join(_describe(pid) for pid in left)
        for pid in left:  # then clean up: each was seen just now carrying this session's marker, or our child
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"{len(left)} process(es) left behind by this test session:\n{listing}", pytrace=False)
