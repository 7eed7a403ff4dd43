"""Property tests: random event sequences never break the pool's invariants."""

from __future__ import annotations

import dataclasses
import signal

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corepool import events as ev
from corepool import exits, recycling
from corepool import policy as p
from corepool import settings as settings_module
from corepool.policy import Policy, Timing, WorkerState


class PoolMachine(RuleBasedStateMachine):
    preload = False

    def __init__(self) -> None:
        super().__init__()
        timing = Timing(health_interval=1, health_timeout=1, boot_timeout=5, graceful_timeout=3, backoff_base=0.5,
                        backoff_max=4, max_spawn_rate=2)
        # Short limits, so that surge-first replacements and the spawn budget are exercised too.
        limits = recycling.Limits(request_timeout=2, max_requests=3, max_requests_jitter=1, max_lifetime=4,
                                  max_rss_bytes=100)
        self.policy = Policy(workers_wanted=3, timing=timing, preload=self.preload, limits=limits,
                             health_endpoint=True)
        self.settings = settings_module.Settings(workers=3)
        self.ticket = 0
        self.now = 0.0
        self.pid = 1000
        self.exited = False
        self.step(ev.Start(self.now))

    # -- feeding ----------------------------------------------------------------------------------

    def step(self, event: ev.Event) -> list[ev.Action]:
        ready_before = self.policy.ready_count()
        slots_before = len(self.policy.slots)
        out = self.policy.handle(event)
        late = [a for a in out if not (isinstance(a, ev.Answer) and a.refused)]
        assert not self.exited or not late, f"actions after Exit (but refusals): {out}"
        for action in out:
            self.check_action(event, action)
            if isinstance(action, ev.Exit):
                assert not self.policy.workers
                self.exited = True
        if isinstance(event, (ev.WorkerReady, ev.WorkerDraining, ev.Pong, ev.ReloadRequested, ev.WorkerForked,
                              ev.WorkerBootError)):
            # Only deaths, timers, stops and scale-downs (possibly deferred until a roll ends) lower capacity.
            removed_slots = max(0, slots_before - len(self.policy.slots))
            assert self.policy.ready_count() >= ready_before - removed_slots, (event, ready_before, out)
        for action in out:
            if isinstance(action, ev.Spawn):
                if self.policy.preload:
                    loader = self.policy.loaders.get(action.generation)
                    assert loader is not None and loader.ready, "workers fork only from a ready loader"
                self.pid += 1
                self.policy.handle(ev.WorkerForked(action.wid, self.pid, self.now))
            if isinstance(action, ev.SpawnLoader):
                assert self.policy.preload
                self.pid += 1
                self.policy.handle(ev.LoaderForked(action.generation, self.pid, self.now))
        return out

    def check_action(self, event: ev.Event, action: ev.Action) -> None:
        if isinstance(action, (ev.Spawn, ev.SpawnLoader)):
            assert self.policy.phase is not p.PoolPhase.STOPPING, "nothing is forked once a stop has begun"
        if isinstance(action, (ev.Signal, ev.Ping)):
            assert action.wid in self.policy.workers
        if isinstance(action, ev.Signal) and action.signum == signal.SIGTERM:
            stopping = self.policy.phase is p.PoolPhase.STOPPING
            if not stopping and not isinstance(event, ev.ScaleRequested) and not self._scaled_down(action.wid):
                # A serving worker is retired only when its slot's replacement just became ready.
                assert isinstance(event, ev.WorkerReady), (event, action)
                assert self.policy.workers[event.wid].slot == self.policy.workers[action.wid].slot

    def _scaled_down(self, wid: int) -> bool:
        return self.policy.workers[wid].slot not in self.policy.slots

    def pick(self, data: st.DataObject, state: WorkerState) -> int | None:
        wids = sorted(w.wid for w in self.policy.workers.values() if w.state is state)
        return data.draw(st.sampled_from(wids)) if wids else None

    # -- rules --------------------------------------------------------------------------------------

    @rule(data=st.data())
    def worker_ready(self, data: st.DataObject) -> None:
        wid = self.pick(data, WorkerState.BOOTING)
        if wid is not None:
            self.step(ev.WorkerReady(wid, self.now))

    @rule(data=st.data(), during_boot=st.booleans())
    def worker_dies(self, data: st.DataObject, during_boot: bool) -> None:
        wid = self.pick(data, WorkerState.BOOTING if during_boot else WorkerState.READY)
        if wid is not None:
            self.step(ev.WorkerExited(wid, exits.killed("SIGKILL"), self.now))

    @rule(data=st.data())
    def retired_worker_stops_accepting(self, data: st.DataObject) -> None:
        wid = self.pick(data, WorkerState.DRAINING)
        if wid is not None:
            self.step(ev.WorkerDraining(wid, self.now))

    @rule(data=st.data())
    def retired_worker_exits(self, data: st.DataObject) -> None:
        wid = self.pick(data, WorkerState.DRAINING)
        if wid is not None:
            self.step(ev.WorkerExited(wid, exits.exited(0), self.now))

    @rule()
    def killed_workers_die(self) -> None:
        for w in list(self.policy.workers.values()):
            if w.kill_reason is not None and w.wid in self.policy.workers:
                self.step(ev.WorkerExited(w.wid, exits.killed("SIGKILL"), self.now))

    @rule()
    def everyone_answers_pings(self) -> None:
        for w in list(self.policy.workers.values()):
            if w.ping_sent_at is not None and w.wid in self.policy.workers:
                self.step(ev.Pong(w.wid, w.ping_seq, 1, self.now))

    @rule(data=st.data(), requests=st.integers(0, 6), age=st.none() | st.floats(0, 5), rss=st.integers(0, 200),
          answer=st.booleans())
    def a_worker_reports_its_load(self, data: st.DataObject, requests: int, age: float | None, rss: int,
                                  answer: bool) -> None:
        """A pong (or unsolicited stats) with requests, an in-flight request of some age, and an RSS sample."""
        wid = self.pick(data, WorkerState.READY)
        if wid is not None:
            w = self.policy.workers[wid]
            seq = w.ping_seq if answer and w.ping_sent_at is not None else None
            self.step(ev.Pong(wid, seq, requests, self.now, inflight=int(age is not None), oldest_age=age,
                              oldest=None if age is None else "GET /slow", rss=rss))

    @rule(data=st.data(), ready=st.booleans())
    def loader_boots_or_dies(self, data: st.DataObject, ready: bool) -> None:
        generations = sorted(g for g, loader in self.policy.loaders.items() if not loader.ready)
        if generations:
            generation = data.draw(st.sampled_from(generations))
            if ready:
                self.step(ev.LoaderReady(generation, self.now))
            else:
                self.step(ev.LoaderBootError(generation, "ImportError", self.now))
                self.step(ev.LoaderExited(generation, exits.exited(3), self.now))

    @rule(data=st.data())
    def loader_exits(self, data: st.DataObject) -> None:
        generations = sorted(self.policy.loaders)
        if generations:
            generation = data.draw(st.sampled_from(generations))
            self.step(ev.LoaderExited(generation, exits.killed("SIGKILL"), self.now))

    @rule(dt=st.floats(min_value=0.01, max_value=6))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.step(ev.Tick(self.now))
        deadline = self.policy.next_deadline()
        assert deadline is None or deadline > self.now, "a deadline in the past would spin the primary's loop"

    @rule()
    def status_asks_for_fresh_pongs(self) -> None:
        self.step(ev.PingAll(self.now))

    @rule()
    def reload(self) -> None:
        self.step(ev.ReloadRequested(self.now))

    @rule(delta=st.sampled_from([-1, 1]))
    def scale(self, delta: int) -> None:
        self.step(ev.ScaleRequested(delta, self.now))

    @precondition(lambda self: self.policy.phase is not p.PoolPhase.STOPPING)
    @rule(graceful=st.booleans())
    def stop(self, graceful: bool) -> None:
        self.step(ev.StopRequested(self.now, graceful))

    @rule()
    def sigterm(self) -> None:
        """Drain first, or a graceful stop; a second signal stops, once stopping one more is a fast stop."""
        drained_first = self.policy.drain.precedes_stop(True, self.policy.timing.drain_seconds, self.policy.phase)
        was_stopping = self.policy.phase.stopping
        out = self.step(ev.StopSignal(self.now, "SIGTERM"))
        if drained_first:
            assert self.policy.drain.then_stop and not any(isinstance(a, ev.Signal) for a in out)
        elif was_stopping:
            assert all(a.signum == signal.SIGKILL for a in out if isinstance(a, ev.Signal))
        else:
            assert self.policy.phase.stopping

    @rule(then_stop=st.booleans(), cancel=st.booleans())
    def drain(self, then_stop: bool, cancel: bool) -> None:
        self.ticket += 1
        before = (self.policy.phase, self.policy.drain.then_stop)
        event: ev.Event = (ev.HostDrainCancelled(self.now, self.ticket) if cancel
                           else ev.HostDrainRequested(self.now, then_stop, self.ticket))
        answers = [a for a in self.step(event) if isinstance(a, ev.Answer)]
        assert [a.ticket for a in answers] == [self.ticket], "every drain request is answered once"
        refused = before[0].stopping or (cancel and before[1])
        assert (answers[0].refused is not None) == refused, (before, answers)
        if cancel and not refused:
            assert not self.policy.drain.draining

    @rule(workers=st.integers(min_value=1, max_value=4), health_interval=st.sampled_from([0.5, 1.0, 2.0]),
          max_requests=st.sampled_from([0, 3]))
    def sighup(self, workers: int, health_interval: float, max_requests: int) -> None:
        fresh = dataclasses.replace(self.settings, workers=workers, health_interval=health_interval,
                                    health_timeout=1.0, boot_timeout=5.0, graceful_timeout=3.0, backoff_max=4.0,
                                    max_spawn_rate=2.0, max_requests=max_requests)
        stopping = self.policy.phase.stopping
        self.step(ev.ConfigReloaded(self.now, self.settings, fresh))
        self.settings = fresh
        assert self.policy.timing.health_interval == health_interval
        assert self.policy.budget.burst == max(2, self.policy.workers_wanted) or self.policy.pending_scale
        if not stopping:
            assert self.policy.reloading or self.policy.reload_pending or self.policy.phase is not p.PoolPhase.RUNNING

    @rule()
    def reload_by_ticket(self) -> None:
        self.ticket += 1
        stopping = self.policy.phase.stopping
        answers = [a for a in self.step(ev.ReloadRequested(self.now, ticket=self.ticket)) if isinstance(a, ev.Answer)]
        assert len(answers) == 1 and (answers[0].refused is not None) == stopping
        if not stopping:
            assert answers[0].generation is not None

    # -- invariants ---------------------------------------------------------------------------------

    @invariant()
    def at_most_one_worker_booting_beyond_the_missing_capacity(self) -> None:
        # A reload adds at most one booting worker at a time; everything else that boots replaces a slot
        # that has no ready worker.
        live = [w for w in self.policy.workers.values() if w.kill_reason is None]
        booting = sum(1 for w in live if w.state is WorkerState.BOOTING)
        served = {w.slot for w in live if w.state is WorkerState.READY}
        missing = sum(1 for index in self.policy.slots if index not in served)
        surging = sum(1 for w in live if w.predecessor is not None and w.state is WorkerState.BOOTING)
        assert booting <= missing + 1 + surging, (booting, missing, surging)

    @invariant()
    def one_serving_worker_per_slot_outside_a_roll(self) -> None:
        rolling = self.policy.roll.booting_wid if self.policy.roll else None
        per_slot: dict[int, int] = {}
        for w in self.policy.workers.values():
            successor = w.predecessor is not None  # surge-first: the old worker serves until this one is ready
            if w.state is not WorkerState.DRAINING and w.kill_reason is None and w.wid != rolling and not successor:
                per_slot[w.slot] = per_slot.get(w.slot, 0) + 1
        assert all(n == 1 for n in per_slot.values()), per_slot

    @invariant()
    def surge_links_are_consistent(self) -> None:
        for w in self.policy.workers.values():
            if w.successor is not None:
                successor = self.policy.workers[w.successor]
                assert successor.predecessor == w.wid and successor.slot == w.slot
                assert w.state is WorkerState.READY and successor.state is WorkerState.BOOTING

    @invariant()
    def serving_process_count_is_bounded(self) -> None:
        serving = [w for w in self.policy.workers.values() if w.state is not WorkerState.DRAINING and not w.kill_reason]
        surging = sum(1 for w in serving if w.predecessor is not None)
        assert len(serving) <= len(self.policy.slots) + 1 + surging

    @invariant()
    def a_deadline_is_pending_while_anything_waits_on_time(self) -> None:
        waiting = any(w.kill_reason is None for w in self.policy.workers.values()) or any(
            s.retry_at is not None for s in self.policy.slots.values()
        )
        if waiting and self.policy.phase is not p.PoolPhase.EXITED:
            assert self.policy.next_deadline() is not None


    @invariant()
    def loaders_only_in_preload_mode_and_one_per_generation(self) -> None:
        if not self.policy.preload:
            assert not self.policy.loaders
        else:
            assert all(g == loader.generation for g, loader in self.policy.loaders.items())


class PreloadMachine(PoolMachine):
    preload = True


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=300, stateful_step_count=60)
TestPreloadMachine = PreloadMachine.TestCase
TestPreloadMachine.settings = settings(max_examples=300, stateful_step_count=60)
