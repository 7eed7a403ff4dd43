"""The pool's decisions, with no processes and no clock: events in, actions out."""

from __future__ import annotations

import signal

import pytest

from corepool import events as ev
from corepool import exits, status
from corepool import policy as p
from corepool.crashpolicy import Cause
from corepool.exits import Ended
from corepool.policy import Policy, Timing

KILLED = exits.killed("SIGKILL")
EXITED_0 = exits.exited(0)  # drained and exited as told
BOOT_FAILED = exits.exited(3)


class Harness:
    """Drives a Policy like the primary does, with fake pids and a hand-turned clock."""

    def __init__(self, workers: int = 2, health_endpoint: bool = False, **timing: float) -> None:
        self.policy = Policy(workers_wanted=workers, timing=Timing(**timing), health_endpoint=health_endpoint)
        self.now = 0.0
        self.next_pid = 100
        self.actions: list[ev.Action] = []

    def feed(self, event: ev.Event) -> list[ev.Action]:
        out = self.policy.handle(event)
        self.actions.extend(out)
        for action in out:
            if isinstance(action, ev.Spawn):
                self.next_pid += 1
                out += self.feed(ev.WorkerForked(action.wid, self.next_pid, self.now))
        return out

    def at(self, now: float) -> list[ev.Action]:
        self.now = now
        return self.feed(ev.Tick(now))

    def start(self) -> list[ev.Action]:
        return self.feed(ev.Start(self.now))

    def ready_all(self) -> list[ev.Action]:
        out: list[ev.Action] = []
        for w in list(self.policy.workers.values()):
            if w.state is p.WorkerState.BOOTING:
                out += self.feed(ev.WorkerReady(w.wid, self.now))
        return out

    def drained(self) -> list[ev.Action]:
        """Every retired worker reports that it closed its listening sockets."""
        out: list[ev.Action] = []
        for w in list(self.policy.workers.values()):
            if w.state is p.WorkerState.DRAINING:
                out += self.feed(ev.WorkerDraining(w.wid, self.now))
        return out

    def exit(self, wid: int, ended: Ended = KILLED) -> list[ev.Action]:
        return self.feed(ev.WorkerExited(wid, ended, self.now))

    def booting(self) -> list[int]:
        return [w.wid for w in self.policy.workers.values() if w.state is p.WorkerState.BOOTING]

    def ready(self) -> list[int]:
        return [w.wid for w in self.policy.workers.values() if w.state is p.WorkerState.READY]


def kinds(actions: list[ev.Action], kind: type) -> list[ev.Action]:
    return [a for a in actions if isinstance(a, kind)]


def test_start_spawns_one_worker_per_slot_and_is_ready_only_when_all_are() -> None:
    h = Harness(workers=3)
    spawns = kinds(h.start(), ev.Spawn)
    assert [s.slot for s in spawns] == [0, 1, 2]
    first, *rest = h.booting()
    assert not kinds(h.feed(ev.WorkerReady(first, 0.1)), ev.PoolReady)
    out: list[ev.Action] = []
    for wid in rest:
        out += h.feed(ev.WorkerReady(wid, 0.2))
    assert kinds(out, ev.PoolReady) == [ev.PoolReady()]
    assert h.policy.phase is p.PoolPhase.RUNNING


def test_boot_failure_before_the_pool_was_ever_ready_aborts_start() -> None:
    h = Harness(workers=2)
    h.start()
    wid = h.booting()[0]
    h.feed(ev.WorkerBootError(wid, "app 'x:app': importing x raised ImportError", 0.1))
    out = h.exit(wid, BOOT_FAILED)
    assert kinds(out, ev.Signal)  # the other booting worker is killed
    other = h.booting()[0]
    out = h.exit(other)
    (exit_,) = kinds(out, ev.Exit)
    assert exit_.code == 1 and "ImportError" in exit_.reason


def test_ready_workers_that_die_are_replaced_at_once_boot_failures_back_off() -> None:
    h = Harness(workers=1, backoff_base=0.5, backoff_max=4)
    h.start()
    h.ready_all()
    for i in range(5):  # a request of death, hit again and again: every death is replaced at once
        h.at(1.0 + i * 0.3)
        wid = h.ready()[0]
        assert kinds(h.exit(wid), ev.Spawn), "a worker that was ready is replaced at once"
        h.ready_all()
    assert h.policy.slots[0].deaths == {Cause.CRASH: 5}
    delays = []
    wid = h.ready()[0]
    h.exit(wid)
    assert kinds(h.exit(h.booting()[0], BOOT_FAILED), ev.Spawn), "a first boot failure: at once"
    for _ in range(6):  # then code that cannot boot: the slot backs off
        new = h.booting()[0]
        out = h.exit(new, BOOT_FAILED)
        assert not kinds(out, ev.Spawn)
        slot = h.policy.slots[0]
        assert slot.retry_at is not None
        delays.append(slot.retry_at - h.now)
        assert kinds(h.at(slot.retry_at), ev.Spawn)
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
    assert h.policy.slots[0].deaths[Cause.BOOT] == 7
    h.ready_all()
    wid = h.ready()[0]
    assert kinds(h.exit(wid), ev.Spawn), "a worker that was ready resets the backoff"
    assert h.policy.slots[0].failures == 0


def test_health_ping_and_kill_on_missing_pong() -> None:
    h = Harness(workers=1, health_interval=10, health_timeout=5)
    h.start()
    h.ready_all()
    wid = h.ready()[0]
    assert h.policy.next_deadline() == 10
    (ping,) = kinds(h.at(10), ev.Ping)
    h.feed(ev.Pong(wid, ping.seq, 42, 11))
    assert h.policy.workers[wid].requests == 42
    (ping,) = kinds(h.at(21), ev.Ping)
    assert not kinds(h.at(25.9), ev.Signal)
    (kill,) = kinds(h.at(26), ev.Signal)
    assert kill.signum == signal.SIGKILL and "health_timeout" in kill.reason
    assert kinds(h.exit(wid), ev.Spawn)


def test_stale_pong_does_not_count() -> None:
    h = Harness(workers=1, health_interval=1, health_timeout=1)
    h.start()
    h.ready_all()
    wid = h.ready()[0]
    (ping,) = kinds(h.at(1), ev.Ping)
    h.feed(ev.Pong(wid, ping.seq - 1, 0, 1.5))
    assert kinds(h.at(2), ev.Signal)


def test_boot_timeout_kills_a_worker_that_never_gets_ready() -> None:
    h = Harness(workers=1, boot_timeout=60)
    h.start()
    (kill,) = kinds(h.at(60), ev.Signal)
    assert kill.signum == signal.SIGKILL and "boot_timeout" in kill.reason


def test_rolling_reload_starts_one_new_worker_before_retiring_each_old_one() -> None:
    h = Harness(workers=2)
    h.start()
    h.ready_all()
    old = set(h.ready())
    out = h.feed(ev.ReloadRequested(1.0))
    assert kinds(out, ev.ReloadStarted) == [ev.ReloadStarted(2)]
    assert len(kinds(out, ev.Spawn)) == 1 and not kinds(out, ev.Signal)
    new = h.booting()[0]
    out = h.feed(ev.WorkerReady(new, 2.0))
    (term,) = kinds(out, ev.Signal)
    assert term.signum == signal.SIGTERM and term.wid in old
    assert len(kinds(out, ev.Spawn)) == 1
    out = h.ready_all()
    (term2,) = kinds(out, ev.Signal)
    assert {term.wid, term2.wid} == old
    assert not kinds(out, ev.ReloadFinished), "not over while an old worker may still accept"
    out = h.drained()
    assert kinds(out, ev.ReloadFinished) == [ev.ReloadFinished(2, True, "all workers run generation 2")]
    assert h.policy.generation == 2
    for wid in old:
        h.exit(wid, EXITED_0)
    assert {w.generation for w in h.policy.workers.values()} == {2}


def test_a_retired_worker_that_exits_without_reporting_also_ends_the_roll() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    (old,) = h.ready()
    h.feed(ev.ReloadRequested(1.0))
    h.ready_all()
    assert h.policy.reloading
    assert kinds(h.exit(old, EXITED_0), ev.ReloadFinished)


def test_reload_that_fails_to_boot_rolls_back_and_keeps_old_workers() -> None:
    h = Harness(workers=2)
    h.start()
    h.ready_all()
    old = set(h.ready())
    h.feed(ev.ReloadRequested(1.0))
    new = h.booting()[0]
    h.feed(ev.WorkerBootError(new, "boom", 1.5))
    out = h.exit(new, BOOT_FAILED)
    (finished,) = kinds(out, ev.ReloadFinished)
    assert not finished.ok and "boom" in finished.reason
    assert not kinds(out, ev.Spawn) and not kinds(out, ev.Signal)
    assert set(h.ready()) == old and h.policy.generation == 1
    assert h.policy.last_reload is not None and not h.policy.last_reload.ok
    # systemd's STATUS= (systemctl status) says why, as the journal's reload line does
    line = status.line(h.policy, 0)
    assert "; last reload rolled back: " + finished.reason.removeprefix("rolled back: ") in line, line
    assert "boom" in line


def test_status_line_shortens_a_long_rollback_reason() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    h.feed(ev.ReloadRequested(1.0))
    new = h.booting()[0]
    h.feed(ev.WorkerBootError(new, "ImportError: " + "x" * 5000, 1.5))
    h.exit(new, BOOT_FAILED)
    line = status.line(h.policy, 0)
    why = line.partition("; last reload rolled back: ")[2].partition("…")[0] + "…"
    assert "failed to boot: ImportError: xxx" in why and len(why) == status.STATUS_REASON_MAX, line


def test_reload_boot_timeout_rolls_back() -> None:
    h = Harness(workers=1, boot_timeout=5)
    h.start()
    h.ready_all()
    h.feed(ev.ReloadRequested(1.0))
    new = h.booting()[0]
    (kill,) = kinds(h.at(6.0), ev.Signal)
    assert kill.wid == new
    (finished,) = kinds(h.exit(new), ev.ReloadFinished)
    assert not finished.ok and "boot_timeout" in finished.reason


def test_reloads_asked_during_a_reload_coalesce_into_one_more() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    h.feed(ev.ReloadRequested(1.0))
    assert not kinds(h.feed(ev.ReloadRequested(1.1)), ev.ReloadStarted)
    assert not kinds(h.feed(ev.ReloadRequested(1.2)), ev.ReloadStarted)
    out = h.ready_all() + h.drained()
    assert [a.generation for a in kinds(out, ev.ReloadStarted)] == [3]
    out = h.ready_all() + h.drained()
    assert kinds(out, ev.ReloadFinished)[0].generation == 3
    assert not h.policy.reloading


def test_graceful_stop_drains_then_exits_zero() -> None:
    h = Harness(workers=2, graceful_timeout=30)
    h.start()
    h.ready_all()
    out = h.feed(ev.StopRequested(5.0))
    assert {a.signum for a in kinds(out, ev.Signal)} == {signal.SIGTERM}
    wids = list(h.policy.workers)
    h.exit(wids[0], EXITED_0)
    (exit_,) = kinds(h.exit(wids[1], EXITED_0), ev.Exit)
    assert exit_.code == 0


def test_stop_kills_stragglers_after_graceful_timeout_and_exits_non_zero() -> None:
    h = Harness(workers=2, graceful_timeout=30)
    h.start()
    h.ready_all()
    h.feed(ev.StopRequested(5.0))
    wids = list(h.policy.workers)
    h.exit(wids[0], EXITED_0)
    (kill,) = kinds(h.at(35.0), ev.Signal)
    assert kill.signum == signal.SIGKILL and kill.wid == wids[1]
    (exit_,) = kinds(h.exit(wids[1]), ev.Exit)
    assert exit_.code == 1 and "1 worker(s) killed" in exit_.reason


def test_stop_during_reload_reports_the_reload_as_failed() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    h.feed(ev.ReloadRequested(1.0))
    (finished,) = kinds(h.feed(ev.StopRequested(2.0)), ev.ReloadFinished)
    assert not finished.ok


def test_scale_up_and_down() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    (spawn,) = kinds(h.feed(ev.ScaleRequested(1, 1.0)), ev.Spawn)
    assert spawn.slot == 1 and h.policy.workers_wanted == 2
    h.ready_all()
    (term,) = kinds(h.feed(ev.ScaleRequested(-1, 2.0)), ev.Signal)
    assert h.policy.workers[term.wid].slot == 1 and h.policy.workers_wanted == 1
    assert not kinds(h.exit(term.wid), ev.Spawn)
    assert not kinds(h.feed(ev.ScaleRequested(-1, 3.0)), ev.Signal), "never below one worker"


def test_a_stop_during_a_scale_down_drain_never_sets_a_deadline_in_the_past() -> None:
    """A worker draining since a scale-down, then a stop: the stop's deadline ends its drain. (Its own
    graceful_timeout deadline stayed in next_deadline() although the stop skips it: the primary's select timeout
    was 0 from that moment to the stop deadline, a busy loop; found by the property test.)"""
    h = Harness(workers=3, graceful_timeout=3)
    h.start()
    h.ready_all()
    h.feed(ev.ScaleRequested(-1, 0.0))
    h.at(2.0)
    h.feed(ev.StopRequested(2.0))
    h.at(3.0)
    assert h.policy.next_deadline() == 5.0  # the stop's graceful_timeout, not the drain's (3.0, now)


def test_scale_during_reload_waits_for_the_reload() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    h.feed(ev.ReloadRequested(1.0))
    out = h.feed(ev.ScaleRequested(1, 1.1))
    assert not kinds(out, ev.Spawn)
    out = h.ready_all() + h.drained()
    assert kinds(out, ev.ReloadFinished)
    assert [s.slot for s in kinds(out, ev.Spawn)] == [1]


def test_healthy_needs_a_recent_pong_from_a_ready_worker() -> None:
    h = Harness(workers=1, health_interval=1, health_timeout=10)
    h.start()
    assert not h.policy.healthy(0.0, 5)
    h.ready_all()
    assert h.policy.healthy(1.0, 5)
    wid = h.ready()[0]
    (ping,) = kinds(h.at(1.0), ev.Ping)
    assert not h.policy.healthy(7.0, 5)
    h.feed(ev.Pong(wid, ping.seq, 0, 7.0))
    assert h.policy.healthy(8.0, 5)


def test_workers_wanted_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Policy(workers_wanted=0)


def test_ping_all_pings_every_ready_worker_at_once() -> None:
    h = Harness(workers=2, health_interval=10)
    h.start()
    h.ready_all()
    pings = kinds(h.feed(ev.PingAll(1.0)), ev.Ping)
    assert sorted(p.wid for p in pings) == sorted(h.ready())
    assert not kinds(h.feed(ev.PingAll(1.1)), ev.Ping), "no second ping while one is outstanding"
