"""Preload mode: one loader per generation imports the app; workers are forked from it."""

from __future__ import annotations

import signal

from corepool import events as ev
from corepool import exits
from corepool import policy as p
from tests.unit.test_policy import BOOT_FAILED, EXITED_0, Harness, kinds


def preload_harness(workers: int = 2) -> Harness:
    h = Harness(workers=workers)
    h.policy.preload = True
    return h


def test_start_imports_once_in_a_loader_then_forks_every_worker_from_it() -> None:
    h = preload_harness(workers=3)
    out = h.start()
    assert kinds(out, ev.SpawnLoader) == [ev.SpawnLoader(1)] and not kinds(out, ev.Spawn)
    out = h.feed(ev.LoaderReady(1, 0.5))
    assert [(s.slot, s.generation) for s in kinds(out, ev.Spawn)] == [(0, 1), (1, 1), (2, 1)]


def test_loader_that_cannot_import_at_start_aborts_the_start() -> None:
    h = preload_harness()
    h.start()
    h.feed(ev.LoaderBootError(1, "app 'x:app': importing x raised ImportError", 0.1))
    (exit_,) = kinds(h.feed(ev.LoaderExited(1, exits.exited(3), 0.2)), ev.Exit)
    assert exit_.code == 1 and "ImportError" in exit_.reason


def running(h: Harness) -> None:
    h.start()
    h.feed(ev.LoaderReady(1, 0.0))
    h.ready_all()


def test_reload_whose_import_fails_touches_no_worker() -> None:
    h = preload_harness()
    running(h)
    before = dict(h.policy.workers)
    out = h.feed(ev.ReloadRequested(1.0))
    assert kinds(out, ev.SpawnLoader) == [ev.SpawnLoader(2)] and not kinds(out, ev.Spawn)
    h.feed(ev.LoaderBootError(2, "SyntaxError: invalid syntax", 1.5))
    out = h.feed(ev.LoaderExited(2, exits.exited(3), 1.6))
    (finished,) = kinds(out, ev.ReloadFinished)
    assert not finished.ok and "SyntaxError" in finished.reason
    assert not kinds(out, ev.Spawn) and not kinds(out, ev.Signal)
    assert h.policy.workers.keys() == before.keys() and set(h.policy.loaders) == {1}


def test_successful_reload_forks_from_the_new_loader_and_retires_the_old_one() -> None:
    h = preload_harness()
    running(h)
    old = set(h.ready())
    h.feed(ev.ReloadRequested(1.0))
    out = h.feed(ev.LoaderReady(2, 2.0))
    assert [s.generation for s in kinds(out, ev.Spawn)] == [2]
    h.ready_all()
    out = h.ready_all() + h.drained()
    assert kinds(out, ev.ReloadFinished)[0].ok
    # Draining workers need no loader: the old one stops as soon as no slot runs generation 1.
    assert ev.SignalLoader(1, signal.SIGTERM, "generation retired") in out
    assert {h.policy.workers[wid].state for wid in old} == {p.WorkerState.DRAINING}


def test_old_loader_is_stopped_once_no_slot_runs_its_generation() -> None:
    h = preload_harness(workers=1)
    running(h)
    h.feed(ev.ReloadRequested(1.0))
    h.feed(ev.LoaderReady(2, 2.0))
    out = h.ready_all() + h.drained()
    assert ev.SignalLoader(1, signal.SIGTERM, "generation retired") in out


def test_crash_replacement_comes_from_the_slots_generation() -> None:
    h = preload_harness()
    running(h)
    wid = h.ready()[0]
    h.at(100.0)
    (spawn,) = kinds(h.exit(wid), ev.Spawn)
    assert spawn.generation == 1


def test_failure_after_fork_restores_every_slot_to_the_last_good_generation() -> None:
    h = preload_harness(workers=2)
    running(h)
    h.feed(ev.ReloadRequested(1.0))
    h.feed(ev.LoaderReady(2, 1.1))
    h.ready_all()  # slot 0 now runs generation 2; slot 1's new worker boots
    assert h.policy.slots[0].generation == 2
    new = h.booting()[0]
    out = h.exit(new, BOOT_FAILED)
    (finished,) = kinds(out, ev.ReloadFinished)
    assert not finished.ok
    (restore,) = kinds(out, ev.Spawn)
    assert (restore.slot, restore.generation) == (0, 1)
    h.ready_all()
    assert {slot.generation for slot in h.policy.slots.values()} == {1}
    live = [w for w in h.policy.workers.values() if w.state is p.WorkerState.READY]
    assert {w.generation for w in live} == {1}


def test_stop_stops_loaders_too_and_exits_when_all_are_gone() -> None:
    h = preload_harness(workers=1)
    running(h)
    out = h.feed(ev.StopRequested(5.0))
    assert ev.SignalLoader(1, signal.SIGTERM, "generation retired") in out
    (wid,) = h.policy.workers
    h.exit(wid, EXITED_0)
    (exit_,) = kinds(h.feed(ev.LoaderExited(1, exits.killed("SIGTERM"), 5.1)), ev.Exit)
    assert exit_.code == 0


def test_a_worker_being_killed_is_not_counted_ready() -> None:
    """Found by the property test (TestPreloadMachine, a failure on Debian 13): a worker SIGKILLed for a missed
    ping stays READY until its exit arrives, and was counted ready beside its replacement; when the next roll
    retired both, "ready" fell by two. A worker being killed serves nobody."""
    h = preload_harness()
    running(h)
    assert h.policy.ready_count() == 2
    wid, other = sorted(h.policy.workers)
    h.feed(ev.PingAll(1.0))
    h.feed(ev.Tick(1.0))  # the pings go out
    h.feed(ev.Pong(other, h.policy.workers[other].ping_seq, 0, 1.5))  # one answers, the other does not
    out = h.feed(ev.Tick(1.0 + h.policy.timing.health_timeout + 0.1))
    assert ev.Signal(wid, signal.SIGKILL, "no pong within health_timeout (5s)") in kinds(out, ev.Signal)
    assert h.policy.workers[wid].state is p.WorkerState.READY  # until its exit arrives
    assert h.policy.ready_count() == 1
