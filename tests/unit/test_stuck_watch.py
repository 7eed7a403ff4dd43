"""corepool.engines.stuck's look, without a pool: what an overdue request and a stalled loop log, with which
journald fields, and that each is said once."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from corepool.engines.stats import RequestStats
from corepool.engines.stuck import StuckWatch, coroutine_frames

pytestmark = pytest.mark.usefixtures("corepool_records")  # tests/unit/conftest.py


def parked_in_the_database(until: threading.Event) -> None:
    until.wait(30)


def test_an_overdue_request_is_logged_once_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    stats = RequestStats()
    reports: list[int] = []
    watch = StuckWatch(stats, request_timeout=2, health_timeout=5, report=lambda: reports.append(1))
    watch.ticked = float("inf")  # the loop turns: no stall
    release = threading.Event()
    thread = threading.Thread(target=parked_in_the_database, args=(release,))
    thread.start()
    try:
        clock = stats.begin("POST", "/orders")
        clock.thread = thread.ident
        with caplog.at_level(logging.INFO, logger="corepool"):
            watch.check(time.monotonic() + 1)  # not overdue yet
            assert not caplog.records and not reports
            watch.check(time.monotonic() + 3)
            watch.check(time.monotonic() + 4)  # said once
    finally:
        release.set()
        thread.join()
    assert reports == [1]
    entries = [r for r in caplog.records if getattr(r, "EVENT", None) == "stuck"]
    assert [r.STACK_OF for r in entries] == ["request thread", "event loop"]  # type: ignore[attr-defined]
    first = entries[0]
    assert first.REQUEST_PATH == "/orders" and first.REQUEST_METHOD == "POST"  # type: ignore[attr-defined]
    assert first.REQUEST_AGE >= 3  # type: ignore[attr-defined]
    assert "in parked_in_the_database" in first.getMessage()
    stats.end(clock, 200)
    watch.check(time.monotonic() + 10)
    assert not watch.reported  # forgotten once it ended


def test_a_stall_is_logged_once_until_the_loop_turns(caplog: pytest.LogCaptureFixture) -> None:
    watch = StuckWatch(RequestStats(), request_timeout=0, health_timeout=4, report=lambda: None)
    with caplog.at_level(logging.INFO, logger="corepool"):
        watch.ticked = time.monotonic()
        watch.check(watch.ticked + 1)  # under half of health_timeout
        watch.check(watch.ticked + 2.5)
        watch.check(watch.ticked + 3)
    stalls = [r for r in caplog.records if "event loop stuck for 2.5s" in r.getMessage()]
    assert len(stalls) == 1 and len(caplog.records) == 1


async def _inner() -> None:
    await asyncio.sleep(30)


async def _outer() -> None:
    await _inner()


def test_coroutine_frames_follow_the_awaits() -> None:
    async def main() -> list[str]:
        task = asyncio.ensure_future(_outer())
        await asyncio.sleep(0)
        names = [f.name for f in coroutine_frames(task.get_coro())]
        task.cancel()
        return names

    names = asyncio.run(main())
    assert names[:2] == ["_outer", "_inner"]
