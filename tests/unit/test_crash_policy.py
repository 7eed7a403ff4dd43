"""Crash policy, surge-first recycling and stop semantics of the pure policy (no processes, no clock)."""

from __future__ import annotations

import signal

import pytest

from corepool import crashpolicy, recycling
from corepool import events as ev
from corepool import policy as p
from corepool.crashpolicy import Cause
from corepool.policy import Policy, Timing
from tests.unit.test_policy import BOOT_FAILED, EXITED_0, Harness, kinds


def harness(workers: int = 2, limits: recycling.Limits | None = None, health_endpoint: bool = False,
            **timing: float) -> Harness:
    h = Harness(workers=workers, health_endpoint=health_endpoint, **timing)
    if limits is not None:
        h.policy.limits = limits
    return h


def pong(h: Harness, wid: int, requests: int = 0, **fields: object) -> list[ev.Action]:
    return h.feed(ev.Pong(wid, None, requests, h.now, **fields))  # type: ignore[arg-type]


def test_a_kill_storm_never_leaves_the_pool_waiting() -> None:
    """kill -9 a random worker every 200 ms for 10 s: every death is replaced at once, nothing backs off."""
    h = harness(workers=2)
    h.start()
    h.ready_all()
    for i in range(50):
        h.at(1.0 + i * 0.2)
        victim = h.ready()[i % 2 if len(h.ready()) > 1 else 0]
        out = h.exit(victim)
        assert kinds(out, ev.Spawn), f"death {i} was not replaced at once"
        assert all(s.retry_at is None for s in h.policy.slots.values())
        h.ready_all()
    assert sum(s.deaths.get(Cause.CRASH, 0) for s in h.policy.slots.values()) == 50
    assert len(h.ready()) == 2


def test_the_spawn_budget_caps_forks_but_never_leaves_nothing_serving() -> None:
    h = harness(workers=2, max_spawn_rate=1.0)
    h.start()
    h.ready_all()
    h.at(10.0)
    for _ in range(2):  # the burst (one per worker) is spent at once
        assert kinds(h.exit(h.ready()[0]), ev.Spawn)
        h.ready_all()
    out = h.exit(h.ready()[0])
    assert not kinds(out, ev.Spawn), "over the budget: wait"
    assert [r for r in kinds(out, ev.Report) if r.event == "spawn_rate"]  # type: ignore[attr-defined]
    slot = next(s for s in h.policy.slots.values() if s.retry_at is not None)
    assert slot.retry_at == pytest.approx(11.0)
    # The last serving worker dies too: nothing serves, so the budget does not apply.
    out = h.exit(h.ready()[0])
    assert kinds(out, ev.Spawn)
    assert kinds(h.at(11.0), ev.Spawn), "the waiting slot is refilled when the budget allows"


def test_spawn_budget_is_a_token_bucket() -> None:
    b = crashpolicy.SpawnBudget(rate=2.0, burst=3.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.next_at(0.0) == pytest.approx(0.5)
    assert b.take(0.5) and not b.take(0.5)
    assert b.take(100.0) and b.take(100.0) and b.take(100.0) and not b.take(100.0)


def test_the_spawn_budget_never_asks_to_wait_until_now() -> None:
    """Float refills leave 0.9999999999999996 of a token: that is a whole one, and a wait is always in the
    future (a retry_at equal to now made the policy's next deadline "now": a busy loop in the primary)."""
    b = crashpolicy.SpawnBudget(rate=1.0, burst=2.0)
    b.take(0.0), b.take(0.0)
    b.tokens = 1.0 - 4e-16
    assert b.take(0.0)
    assert b.next_at(1e6) > 1e6
    b.tokens, b.updated = 0.0, 1e6
    assert b.next_at(1e6) == pytest.approx(1e6 + 1.0)


def test_an_overdue_request_replaces_its_worker_surge_first() -> None:
    h = harness(workers=1, limits=recycling.Limits(request_timeout=30.0), health_interval=10, health_timeout=5)
    h.start()
    h.ready_all()
    old = h.ready()[0]
    (ping,) = kinds(h.at(10.0), ev.Ping)
    h.feed(ev.Pong(old, ping.seq, 3, 10.0, inflight=1, oldest_age=25.0, oldest="GET /slow"))  # type: ignore[attr-defined]
    assert h.policy.workers[old].next_ping_at == pytest.approx(15.05), "look again when it would be overdue"
    (ping,) = kinds(h.at(15.05), ev.Ping)
    out = h.feed(ev.Pong(old, ping.seq, 3, 15.1, inflight=1, oldest_age=30.1, oldest="GET /slow"))  # type: ignore[attr-defined]
    (spawn,) = kinds(out, ev.Spawn)
    assert spawn.slot == 0  # type: ignore[attr-defined]
    assert not kinds(out, ev.Signal), "the old worker keeps serving until its successor is ready"
    (report,) = [r for r in kinds(out, ev.Report) if r.event == "request_timeout"]  # type: ignore[attr-defined]
    assert "GET /slow" in report.message  # type: ignore[attr-defined]
    out = h.ready_all()
    (term,) = kinds(out, ev.Signal)
    assert term.wid == old and term.signum == signal.SIGTERM  # type: ignore[attr-defined]
    h.at(15.2 + 30.0)  # graceful_timeout: still running, so SIGKILL
    assert h.policy.workers[old].kill_reason is not None
    h.exit(old)
    assert h.policy.slots[0].deaths == {Cause.REQUEST_TIMEOUT: 1}
    assert len(h.ready()) == 1


def test_request_timeout_zero_is_off() -> None:
    h = harness(workers=1, limits=recycling.Limits(request_timeout=0))
    h.start()
    h.ready_all()
    wid = h.ready()[0]
    assert not kinds(pong(h, wid, inflight=1, oldest_age=10_000.0, oldest="GET /"), ev.Spawn)


def test_max_requests_with_jitter_recycles_one_worker_at_a_time() -> None:
    h = harness(workers=2, limits=recycling.Limits(request_timeout=0, max_requests=100, max_requests_jitter=10))
    h.start()
    out = h.ready_all()
    limits = {a.wid: a.limit for a in kinds(out, ev.SetRequestLimit)}  # type: ignore[attr-defined]
    assert set(limits) == set(h.ready()) and all(100 <= n <= 110 for n in limits.values())
    a, b = h.ready()
    assert not kinds(pong(h, a, requests=limits[a] - 1), ev.Spawn)
    assert kinds(pong(h, a, requests=limits[a]), ev.Spawn)
    assert not kinds(pong(h, b, requests=limits[b]), ev.Spawn), "one recycle at a time"
    out = h.ready_all()
    assert [s.wid for s in kinds(out, ev.Signal)] == [a]  # type: ignore[attr-defined]
    assert kinds(pong(h, b, requests=limits[b]), ev.Spawn), "then the next"


def test_max_rss_needs_several_samples_in_a_row() -> None:
    h = harness(workers=1, limits=recycling.Limits(request_timeout=0, max_rss_bytes=100 * 2**20))
    h.start()
    h.ready_all()
    wid = h.ready()[0]
    big, small = 150 * 2**20, 50 * 2**20
    for rss in (big, big, small, big, big):
        assert not kinds(pong(h, wid, rss=rss), ev.Spawn)
    assert kinds(pong(h, wid, rss=big), ev.Spawn)


def test_max_lifetime_recycles_and_sets_a_deadline() -> None:
    h = harness(workers=1, limits=recycling.Limits(request_timeout=0, max_lifetime=100.0),
                health_interval=1000, health_timeout=5)
    h.start()
    h.ready_all()
    w = h.policy.workers[h.ready()[0]]
    assert w.max_age is not None and 100.0 <= w.max_age <= 110.0
    assert h.policy.next_deadline() == pytest.approx(w.max_age)
    assert kinds(h.at(w.max_age), ev.Spawn)


def test_a_successor_that_cannot_boot_keeps_the_old_worker_and_waits() -> None:
    h = harness(workers=1, limits=recycling.Limits(request_timeout=0, max_requests=10))
    h.start()
    h.ready_all()
    old = h.ready()[0]
    pong(h, old, requests=10)
    (new,) = h.booting()
    out = h.exit(new, BOOT_FAILED)
    assert not kinds(out, ev.Spawn) and not kinds(out, ev.Signal)
    assert h.policy.workers[old].state is p.WorkerState.READY
    assert not kinds(pong(h, old, requests=11), ev.Spawn), "not again at once"
    h.at(h.policy.workers[old].recycle_after)
    assert kinds(pong(h, old, requests=12), ev.Spawn)


def test_nothing_is_spawned_once_a_stop_has_begun() -> None:
    h = harness(workers=2)
    h.start()
    h.ready_all()
    h.exit(h.ready()[0])  # replaced: a booting successor
    out = h.feed(ev.StopRequested(h.now, graceful=True))
    assert not kinds(out, ev.Spawn)
    for wid in list(h.policy.workers):
        assert not kinds(h.exit(wid, EXITED_0), ev.Spawn)
    assert h.policy.phase is p.PoolPhase.EXITED


def test_a_second_stop_kills_at_once_and_exits_1() -> None:
    h = harness(workers=2)
    h.start()
    h.ready_all()
    h.feed(ev.StopRequested(1.0, graceful=True))
    out = h.feed(ev.StopRequested(1.1, graceful=False))
    assert {a.signum for a in kinds(out, ev.Signal)} == {signal.SIGKILL}  # type: ignore[attr-defined]
    out = []
    for wid in list(h.policy.workers):
        out += h.exit(wid)
    (exit_,) = kinds(out, ev.Exit)
    assert exit_.code == 1 and "2 worker(s) killed" in exit_.reason  # type: ignore[attr-defined]


def test_a_worker_breaking_the_channel_protocol_is_killed_and_replaced() -> None:
    h = harness(workers=1)
    h.start()
    h.ready_all()
    wid = h.ready()[0]
    (kill,) = kinds(h.feed(ev.WorkerMisbehaved(wid, "message is not JSON", h.now)), ev.Signal)
    assert kill.signum == signal.SIGKILL  # type: ignore[attr-defined]
    assert kinds(h.exit(wid), ev.Spawn)


def test_recycling_verdicts() -> None:
    limits = recycling.Limits(max_requests=5, max_rss_bytes=10, max_lifetime=60)
    assert recycling.verdict(limits, requests=5, request_limit=5, rss=None, rss_samples_over=0, age=0,
                             max_age=None) is not None
    assert recycling.verdict(limits, requests=4, request_limit=5, rss=11, rss_samples_over=2, age=59,
                             max_age=60) is None
    assert recycling.overdue(limits, 29.0, "GET /") is None
    assert "GET /" in (recycling.overdue(limits, 30.0, "GET /") or "")


def test_policy_without_limits_has_defaults() -> None:
    policy = Policy(workers_wanted=1, timing=Timing())
    assert policy.limits.request_timeout == 30.0


def test_a_host_drain_serves_on_then_stops_gracefully() -> None:
    h = harness(workers=2, health_endpoint=True, drain_seconds=10.0)
    h.start()
    h.ready_all()
    out = h.feed(ev.HostDrainRequested(1.0, then_stop=True))
    assert h.policy.drain.draining and not kinds(out, ev.Signal), "still serving while balancers move away"
    assert h.policy.next_deadline() == pytest.approx(min(10.0, 11.0))  # the first ping, then the drain's end
    out = h.at(11.0)
    assert {a.signum for a in kinds(out, ev.Signal)} == {signal.SIGTERM}  # type: ignore[attr-defined]
    assert h.policy.phase is p.PoolPhase.STOPPING


def test_a_host_drain_without_stop_can_be_cancelled() -> None:
    h = harness(workers=1, health_endpoint=True, drain_seconds=5.0)
    h.start()
    h.ready_all()
    h.feed(ev.HostDrainRequested(1.0, then_stop=False))
    h.at(6.0)
    assert h.policy.drain.draining and h.policy.phase is p.PoolPhase.RUNNING
    h.feed(ev.HostDrainCancelled(7.0))
    assert not h.policy.drain.draining


def test_a_second_stop_during_a_host_drain_stops_now() -> None:
    h = harness(workers=1, health_endpoint=True, drain_seconds=10.0)
    h.start()
    h.ready_all()
    h.feed(ev.HostDrainRequested(1.0))
    out = h.feed(ev.StopRequested(2.0, graceful=True))
    assert kinds(out, ev.Signal) and h.policy.phase is p.PoolPhase.STOPPING
