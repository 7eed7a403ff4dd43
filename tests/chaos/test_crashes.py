"""Workers that die or wedge under load (issue 8, items 1, 2 and 5): the pool keeps serving.

Only the requests inside a killed worker may fail (counted apart as ``dropped``); no ordinary request is refused,
times out or waits more than 2 s in the kill-storm and request-of-death cases, and afterwards every slot has a
ready worker and none backs off.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from typing import Any

import pytest

from tests.chaos.conftest import FAST_HEALTH
from tests.chaos.harness import Clients, deaths, describe, forks, status, summary, wait_settled

CLIENTS = 8
LONGEST_ORDINARY_WAIT = 2.0  # issue 8 item 5: an emptied pool shows up as waits of several seconds


class ReadyWorkers:
    """The pool's ready workers, refreshed continuously from its status in a thread (a status takes a ping)."""

    def __init__(self, control: str) -> None:
        self.control = control
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ReadyWorkers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                s = status(self.control)
            except (OSError, ValueError, AssertionError):
                continue
            self.pids = [w["pid"] for w in s["workers"] if w["state"] == "ready" and w["pid"]]


@pytest.mark.parametrize(("mode", "app"), [("preload", "chaos_asgi:app"), ("lazy", "chaos_asgi:app"),
                                           ("preload", "chaos_wsgi:app")])
def test_kill_storm(pool_factory: Any, mode: str, app: str, wsgi_engine: str) -> None:
    """kill -9 a random ready worker every 200 ms for 10 s."""
    pool = pool_factory(app, workers=2).start()
    killed: set[int] = set()
    empty_ticks = 0  # ticks at which the pool had no ready worker to kill
    started = time.monotonic()
    with ReadyWorkers(pool.control) as ready, Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.5)
        rng = random.Random(8)
        for _ in range(50):
            candidates = [pid for pid in ready.pids if pid not in killed]
            if candidates:
                victim = rng.choice(candidates)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    killed.add(victim)
            else:
                empty_ticks += 1
            time.sleep(0.2)
        time.sleep(0.5)
    kills = len(killed)
    tally = load.stop()
    after = wait_settled(pool.control)
    summary(f"kill storm ({mode}, {app}, WSGI on {wsgi_engine})", time.monotonic() - started,
            ordinary=tally.line(), kills=kills, ticks_without_a_ready_worker=empty_ticks,
            forks=forks(pool.log()), after=describe(after))
    # A tick may find only just-killed pids while the status is a ping behind; an emptied pool finds none for long.
    assert empty_ticks <= 15, f"{empty_ticks} of 50 ticks found no ready worker to kill: the pool emptied"
    assert deaths(after) == {"crash": kills}, "each kill of a ready worker is one death by crash, and nothing else"
    assert tally.failed == 0, tally.errors
    assert tally.dropped <= kills * CLIENTS
    assert tally.longest_wait < LONGEST_ORDINARY_WAIT
    assert tally.ok > 100


@pytest.mark.parametrize("route", ["/kill", "/segv"])
def test_request_of_death(pool_factory: Any, route: str) -> None:
    """A route that kills its own worker (SIGKILL, or a segfault), hit 3 times a second for 10 s."""
    pool = pool_factory("chaos_asgi:app", workers=2).start()
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.5)
        attack = Clients(pool.port, path=route, keepalive=0, fresh=1, interval=1 / 3, timeout=5).start()
        time.sleep(10)
        death = attack.stop()
        time.sleep(0.5)
    tally = load.stop()
    after = wait_settled(pool.control)
    summary(f"request of death {route}", time.monotonic() - started, ordinary=tally.line(),
            deadly=death.line(), forks=forks(pool.log()), after=describe(after))
    assert death.ok == 0 and death.failed == 0, death.errors  # each one died with its worker, none was refused
    assert death.dropped >= 25
    assert deaths(after) == {"crash": death.dropped}, "each deadly request is one death by crash, and nothing else"
    assert tally.failed == 0, tally.errors
    assert tally.longest_wait < LONGEST_ORDINARY_WAIT
    assert tally.ok > 100


def test_sigstopped_worker_is_replaced(pool_factory: Any) -> None:
    """A SIGSTOPped worker fails its health ping and is replaced; only the requests it held fail."""
    pool = pool_factory("chaos_asgi:app", *FAST_HEALTH, workers=2).start()
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.5)
        victim = sorted(pool.pids())[0]
        os.kill(victim, signal.SIGSTOP)
        pool.wait_for(lambda s: victim not in {w["pid"] for w in s["workers"]} and s["workers_ready"] == 2, 10)
        time.sleep(0.5)
    tally = load.stop()
    after = wait_settled(pool.control)
    summary("SIGSTOP a worker", time.monotonic() - started, ordinary=tally.line(), after=describe(after))
    assert "no pong within health_timeout" in pool.log()
    assert deaths(after) == {"health": 1}
    assert tally.failed == 0, tally.errors
    assert tally.ok > 100


def test_blocked_event_loop_is_replaced(pool_factory: Any) -> None:
    """An ASGI handler that blocks its event loop (time.sleep in async def) for longer than health_timeout."""
    pool = pool_factory("chaos_asgi:app", *FAST_HEALTH, workers=2).start()
    started = time.monotonic()
    before = pool.pids()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.5)
        blocker = Clients(pool.port, path="/block?s=30", keepalive=0, fresh=1, count=1, timeout=40).start()
        pool.wait_for(lambda s: len(before - {w["pid"] for w in s["workers"]}) == 1 and s["workers_ready"] == 2, 15)
        time.sleep(0.5)
        blocked = blocker.join()
    tally = load.stop()
    after = wait_settled(pool.control)
    summary("blocked event loop", time.monotonic() - started, ordinary=tally.line(), blocker=blocked.line(),
            after=describe(after))
    assert "no pong within health_timeout" in pool.log()
    assert blocked.dropped == 1
    assert deaths(after) == {"health": 1}
    assert tally.failed == 0, tally.errors
    assert tally.ok > 100
