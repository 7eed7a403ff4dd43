"""The decisions the primary used to make itself, now the policy's: stop signals, refusals and their answers,
SIGHUP's settings, the preload fallback, systemd's timeout extensions and the watchdog (no processes, no clock)."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from corepool import events as ev
from corepool import hostdrain, settings, signals, tuning
from corepool import policy as p
from tests.unit.test_policy import Harness, kinds


def running(workers: int = 2, health_endpoint: bool = True, **timing: float) -> Harness:
    h = Harness(workers=workers, health_endpoint=health_endpoint, **timing)
    h.start()
    h.ready_all()
    assert h.policy.phase is p.PoolPhase.RUNNING
    return h


def signums(out: list[ev.Action]) -> set[int]:
    return {a.signum for a in kinds(out, ev.Signal)}  # type: ignore[attr-defined]


def test_sigterm_with_a_health_endpoint_drains_first_then_a_second_stops_then_a_third_kills() -> None:
    h = running(drain_seconds=6.0, graceful_timeout=30.0)
    out = h.feed(ev.StopSignal(1.0, "SIGTERM"))
    assert not kinds(out, ev.Signal) and h.policy.drain.draining and h.policy.drain.then_stop
    (stopping,) = kinds(out, ev.Stopping)
    assert stopping == ev.Stopping("draining: health checks fail for 6s, then stopping", 6.0 + 30.0 + 5)
    assert any("SIGTERM: draining the host for 6s" in r.message for r in kinds(out, ev.Report))  # type: ignore
    out = h.feed(ev.StopSignal(2.0, "SIGTERM"))  # the second: no more draining, a graceful stop now
    assert signums(out) == {signal.SIGTERM} and h.policy.phase is p.PoolPhase.STOPPING
    assert kinds(out, ev.Stopping) == [ev.Stopping("stopping: draining workers", 35.0)]
    out = h.feed(ev.StopSignal(3.0, "SIGTERM"))  # once stopping: a fast stop
    assert signums(out) == {signal.SIGKILL} and not kinds(out, ev.Stopping)


def test_sigterm_without_a_health_endpoint_or_while_starting_stops_at_once() -> None:
    h = running(health_endpoint=False, drain_seconds=6.0)
    assert signums(h.feed(ev.StopSignal(1.0, "SIGINT"))) == {signal.SIGTERM}
    starting = Harness(workers=1, health_endpoint=True, drain_seconds=6.0)
    starting.start()
    starting.feed(ev.StopSignal(0.5, "SIGTERM"))
    assert starting.policy.phase is p.PoolPhase.STOPPING, "a starting pool answers 503 already: no drain"


def test_sigquit_is_a_fast_stop() -> None:
    h = running()
    out = h.feed(ev.StopRequested(1.0, graceful=False, by="SIGQUIT"))
    assert signums(out) == {signal.SIGKILL}
    assert any(r.message == "SIGQUIT: fast stop" for r in kinds(out, ev.Report))  # type: ignore[attr-defined]


def test_a_reload_is_answered_with_its_generation_queued_or_refused() -> None:
    h = Harness(workers=1)
    h.start()
    assert kinds(h.feed(ev.ReloadRequested(0.1, ticket=1)), ev.Answer) == [ev.Answer(1, generation=2, queued=True)]
    h.ready_all()  # the queued reload starts now
    assert h.policy.roll is not None and h.policy.roll.generation == 2
    out = h.feed(ev.ReloadRequested(0.2, ticket=2))
    assert kinds(out, ev.Answer) == [ev.Answer(2, generation=3, queued=True)], "behind the roll in progress"
    h.ready_all()
    h.drained()
    for wid in [w.wid for w in h.policy.workers.values() if w.state is p.WorkerState.DRAINING]:
        h.exit(wid)
    h.ready_all()
    h.drained()
    h.feed(ev.StopRequested(1.0))
    out = h.feed(ev.ReloadRequested(1.1, ticket=3))
    assert kinds(out, ev.Answer) == [ev.Answer(3, refused=hostdrain.STOPPING)]
    assert not kinds(out, ev.ReloadStarted)


def test_a_reload_of_a_running_pool_starts_and_says_its_generation() -> None:
    h = running(workers=1)
    out = h.feed(ev.ReloadRequested(1.0, ticket=7))
    assert kinds(out, ev.Answer) == [ev.Answer(7, generation=2, queued=False)]
    assert kinds(out, ev.ReloadStarted) == [ev.ReloadStarted(2)]
    assert out.index(kinds(out, ev.Answer)[0]) < out.index(kinds(out, ev.ReloadStarted)[0]), \
        "answered before the roll starts, so that a --wait client is waiting when it ends"


def test_drain_refusals() -> None:
    h = running(health_endpoint=False)
    assert kinds(h.feed(ev.HostDrainRequested(1.0, ticket=1)), ev.Answer) == [
        ev.Answer(1, refused=hostdrain.NO_ENDPOINT)]
    h = running(drain_seconds=10.0)
    h.feed(ev.HostDrainRequested(1.0, then_stop=True, ticket=2))
    assert kinds(h.feed(ev.HostDrainCancelled(2.0, ticket=3)), ev.Answer) == [
        ev.Answer(3, refused=hostdrain.ENDS_IN_A_STOP)]
    assert h.policy.drain.draining
    h.feed(ev.StopRequested(3.0))
    assert kinds(h.feed(ev.HostDrainCancelled(3.1, ticket=4)), ev.Answer) == [ev.Answer(4, refused=hostdrain.STOPPING)]
    assert kinds(h.feed(ev.HostDrainRequested(3.2, ticket=5)), ev.Answer) == [ev.Answer(5, refused=hostdrain.STOPPING)]


def test_a_drain_until_cancelled_is_answered_and_cancelled() -> None:
    h = running(drain_seconds=10.0)
    assert kinds(h.feed(ev.HostDrainRequested(1.0, then_stop=False, ticket=1)), ev.Answer) == [ev.Answer(1)]
    assert kinds(h.feed(ev.HostDrainCancelled(2.0, ticket=2)), ev.Answer) == [ev.Answer(2)]
    assert not h.policy.drain.draining and h.policy.phase is p.PoolPhase.RUNNING


def test_sighup_settings_change_the_timing_scale_and_reload() -> None:
    old = settings.Settings(workers=2)
    new = dataclasses.replace(old, workers=3, health_interval=2.0, max_spawn_rate=5.0, bind=("127.0.0.1:9",))
    h = running(workers=2)
    out = h.feed(ev.ConfigReloaded(1.0, old, new))
    assert h.policy.timing.health_interval == 2.0 and h.policy.budget.rate == 5.0
    assert h.policy.budget.burst == 3.0, "one fork per worker (at least two) at once"
    assert len(h.policy.slots) == 3 and h.policy.workers_wanted == 3
    assert kinds(out, ev.ReloadStarted) == [ev.ReloadStarted(2)]
    (restart,) = [r for r in kinds(out, ev.Report) if "on restart" in r.message]  # type: ignore[attr-defined]
    assert restart.message.startswith("SIGHUP: bind changed")  # type: ignore[attr-defined]


def test_sighup_with_a_bad_config_keeps_the_settings_and_does_not_reload() -> None:
    h = running()
    out = h.feed(ev.ConfigRefused(1.0, "workers: must be >= 1"))
    assert h.policy.config_error == "workers: must be >= 1" and not kinds(out, ev.ReloadStarted)
    h.feed(ev.ConfigReloaded(2.0, settings.Settings(workers=2), settings.Settings(workers=2)))
    assert h.policy.config_error is None


def test_preload_without_a_subreaper_falls_back_to_lazy() -> None:
    policy = p.Policy(workers_wanted=1, preload=True)
    out = policy.handle(ev.Start(0.0, subreaper=False))
    assert not policy.preload and kinds(out, ev.Spawn) and not kinds(out, ev.SpawnLoader)
    assert kinds(out, ev.ExtendTimeout) == [ev.ExtendTimeout(policy.timing.start_extension)]
    kept = p.Policy(workers_wanted=1, preload=True)
    assert kinds(kept.handle(ev.Start(0.0)), ev.SpawnLoader) and kept.preload


def test_each_fork_of_a_roll_extends_systemds_reload_timeout() -> None:
    h = running(workers=1, boot_timeout=20.0, graceful_timeout=5.0)
    out = h.feed(ev.ReloadRequested(1.0))
    assert kinds(out, ev.ExtendTimeout) == [ev.ExtendTimeout(20.0 + 5.0 + 10)]


def test_the_watchdog_is_fed_while_some_worker_answers() -> None:
    h = Harness(workers=1, health_interval=1.0, health_timeout=100.0)
    h.policy.watchdog_interval = 2.0
    out = h.start()
    assert kinds(out, ev.FeedWatchdog), "starting has its own timeout: fed"
    h.ready_all()
    assert h.policy.next_deadline() is not None
    out = h.at(2.0)
    assert kinds(out, ev.FeedWatchdog)
    out = h.at(4.5)  # no pong since the worker was ready at 0: more than two intervals
    assert not kinds(out, ev.FeedWatchdog)
    assert any(r.event == "watchdog" for r in kinds(out, ev.Report))  # type: ignore[attr-defined]


def test_tuning_caps_the_health_interval_under_a_watchdog_and_shares_the_drain() -> None:
    s = settings.Settings(health_interval=10.0, graceful_timeout=30.0)
    assert tuning.timing(s, None).health_interval == 10.0
    assert tuning.timing(s, 3.0).health_interval == pytest.approx(2.0)
    assert tuning.drain_timeout(30.0) == pytest.approx(27.0) and tuning.drain_timeout(0.0) == 0.1
    t = tuning.timing(s)
    assert (t.start_extension, t.stop_extension) == (s.boot_timeout + 10, 35.0)


def test_what_each_signal_asks_for() -> None:
    s = settings.Settings()
    assert signals.event_for(signal.SIGTERM, 1.0, s, {}) == ev.StopSignal(1.0, "SIGTERM")
    assert signals.event_for(signal.SIGQUIT, 1.0, s, {}) == ev.StopRequested(1.0, False, "SIGQUIT")
    assert signals.event_for(signal.SIGHUP, 1.0, s, {}) == ev.ReloadRequested(1.0, "SIGHUP"), "no config file"
    assert signals.event_for(signal.SIGTTOU, 1.0, s, {}) == ev.ScaleRequested(-1, 1.0)
    assert signals.event_for(signal.SIGCHLD, 1.0, s, {}) is None


def test_sighup_rereads_the_config_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "pool.toml"
    path.write_text('app = "x:app"\nworkers = 3\n')
    current = settings.load(str(path))
    path.write_text('app = "x:app"\nworkers = 0\n')
    refused = signals.event_for(signal.SIGHUP, 1.0, current, {})
    assert isinstance(refused, ev.ConfigRefused) and "workers" in refused.error
    path.write_text('app = "x:app"\nworkers = 4\n')
    reloaded = signals.event_for(signal.SIGHUP, 2.0, current, {"workers": 5})
    assert isinstance(reloaded, ev.ConfigReloaded) and reloaded.new.workers == 5, "flags win over the file"
