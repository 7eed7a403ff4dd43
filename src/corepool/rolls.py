"""A reload's roll, the :class:`Rolls` half of :class:`corepool.policy.Policy` (pure, as the policy is).

A reload rolls the slots to a new generation one at a time: the new worker boots next to the slot's old one, and
the old one is retired once the new one is ready (the slot never goes without a serving worker). With
``canary_seconds``, the first new worker is the canary: the roll pauses while it serves its share next to the old
generation, and :mod:`corepool.canary` judges it; a canary judged worse, or a new worker that cannot boot, rolls
the reload back (in preload mode the slots already moved are restored onto the last good generation). A roll is
over only when every retired worker stopped accepting, so that after ``corepool reload --wait`` returned only one
generation answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corepool import canary
from corepool import events as ev
from corepool.crashpolicy import Cause
from corepool.poolstate import PoolPhase, ReloadResult, Roll, Slot, Timing, Worker, WorkerState, counted


class Rolls:
    """Reloads and their canary; the rest of the pool (spawning, retiring, killing) is the policy's."""

    # The policy's state and mechanics this half uses (declared for the type checker; corepool.policy has them).
    phase: PoolPhase
    generation: int
    preload: bool
    canary_rules: canary.Rules
    workers: dict[int, Worker]
    slots: dict[int, Slot]
    roll: Roll | None
    reload_pending: bool
    last_reload: ReloadResult | None
    _last_generation: int

    timing: Timing

    if TYPE_CHECKING:
        def _spawn(self, slot: int, generation: int, now: float, out: list[ev.Action]) -> int | None: ...
        def _retire(self, w: Worker, now: float, reason: str, out: list[ev.Action], cause: Cause | None) -> None: ...
        def _kill(self, w: Worker, reason: str, out: list[ev.Action], cause: Cause | None = None) -> None: ...
        def _has_ready_loader(self, generation: int) -> bool: ...
        def _want_loader(self, generation: int, now: float, out: list[ev.Action]) -> None: ...
        def _slot_has_live_worker(self, index: int) -> bool: ...
        def _apply_pending_scale(self, now: float, out: list[ev.Action]) -> None: ...

    def _begin_roll(self, now: float, reason: str, out: list[ev.Action]) -> None:
        self._last_generation += 1
        generation = self._last_generation
        self.roll = Roll(generation=generation, pending_slots=sorted(self.slots), started_at=now)
        out.append(ev.ReloadStarted(generation))
        count = len(self.slots)
        out.append(ev.Report("reload", f"{reason}: rolling {counted(count, 'worker')} to generation {generation}"))
        self._roll_next(now, out)

    def _roll_next(self, now: float, out: list[ev.Action]) -> None:
        roll = self.roll
        assert roll is not None
        if roll.canary is not None or roll.failed is not None:
            return  # paused while the canary is watched, or while a rolled-back canary drains
        while roll.booting_wid is None and roll.pending_slots:
            index = roll.pending_slots[0]
            if index not in self.slots:
                roll.pending_slots.pop(0)
                continue
            if self.preload and not self._has_ready_loader(roll.generation):
                self._want_loader(roll.generation, now, out)  # the roll goes on at ev.LoaderReady
                return
            roll.pending_slots.pop(0)
            roll.booting_wid = self._spawn(index, roll.generation, now, out)
        if roll.booting_wid is None and not roll.retiring:
            self._finish_roll(True, f"all workers run generation {roll.generation}", now, out)

    def _roll_slot_done(self, new: Worker, now: float, out: list[ev.Action]) -> None:
        roll = self.roll
        assert roll is not None
        roll.booting_wid = None
        if self.canary_rules.seconds > 0 and not roll.restoring and not roll.canary_done:
            self._canary_start(new, now, out)
            return
        self._roll_slot_switch(new, now, out)

    def _roll_slot_switch(self, new: Worker, now: float, out: list[ev.Action]) -> None:
        """The slot runs the new generation: its old worker is retired, the roll goes on."""
        slot = self.slots[new.slot]
        slot.generation = new.generation
        slot.failures = 0
        slot.retry_at = None
        for old in list(self.workers.values()):
            if old.slot == new.slot and old.wid != new.wid and old.state is not WorkerState.DRAINING:
                self._retire(old, now, f"replaced by generation {new.generation}", out, Cause.RELOAD)
        self._roll_next(now, out)

    def _roll_failed(self, reason: str, now: float, out: list[ev.Action]) -> None:
        roll = self.roll
        assert roll is not None
        if roll.booting_wid is not None:
            w = self.workers.get(roll.booting_wid)
            if w is not None:
                self._kill(w, "reload rolled back", out, Cause.BOOT)
            roll.booting_wid = None
        # Slots that lost their worker while the roll was going on are refilled with their own generation
        # (in preload mode the slots already on the failed generation are restored by _finish_roll instead).
        for slot in self.slots.values():
            restorable = self.preload and slot.generation == roll.generation
            if not self._slot_has_live_worker(slot.index) and slot.retry_at is None and not restorable:
                self._spawn(slot.index, slot.generation, now, out)
        self._finish_roll(False, f"rolled back: {reason}", now, out)

    def _finish_roll(self, ok: bool, reason: str, now: float, out: list[ev.Action]) -> None:
        roll = self.roll
        assert roll is not None
        self.roll = None
        if roll.restoring:
            out.append(ev.Report("reload", f"restore to generation {roll.generation}: {reason}", warning=not ok))
        else:
            if ok:
                self.generation = roll.generation
            self.last_reload = ReloadResult(roll.generation, ok, reason, now)
            out.append(ev.ReloadFinished(roll.generation, ok, reason))
            out.append(ev.Report("reload", f"reload to generation {roll.generation}: {reason}", warning=not ok))
            moved = sorted(i for i, slot in self.slots.items() if slot.generation == roll.generation)
            if not ok and self.preload and moved:
                # Preload keeps the last good generation's loader: put every slot back on it.
                self.roll = Roll(self.generation, moved, started_at=now, restoring=True)
                out.append(ev.Report("reload", f"restoring slots {moved} to generation {self.generation}"))
                self._roll_next(now, out)
                return
        if self.reload_pending and self.phase is PoolPhase.RUNNING:
            self.reload_pending = False
            self._begin_roll(now, "queued reload", out)
        else:
            self._apply_pending_scale(now, out)

    # ------------------------------------------------------------------------------------------- canary

    def _canary_start(self, new: Worker, now: float, out: list[ev.Action]) -> None:
        """Pause the roll: the new worker serves next to every old one (its slot's included) for a window."""
        roll = self.roll
        assert roll is not None
        seconds = self.canary_rules.seconds
        roll.canary = canary.Watch(new.wid, now, now + seconds)
        out.append(ev.CapShare(new.wid, True))  # its share of the requests, not what an idle worker would win
        out.append(ev.Report("canary", f"worker {new.name} is the canary: watching it for {seconds:g}s "
                          "before rolling on", new.wid))
        self._ping_now(self._canary_old_workers(roll.canary), now)  # their counts at the window's start

    def _canary_old_workers(self, watch: canary.Watch) -> list[Worker]:
        generation = self.roll.generation if self.roll is not None else self.generation
        return [w for w in self.workers.values() if w.wid != watch.wid and w.serving and w.generation != generation]

    @staticmethod
    def _ping_now(workers: list[Worker], now: float) -> None:
        for w in workers:
            if w.ping_sent_at is None:
                w.next_ping_at = now

    def _canary_due(self, watch: canary.Watch, now: float, out: list[ev.Action]) -> None:
        if watch.collect_until is None:
            # The window is over: ask the canary and every old worker for their counts; judge when all answered.
            watch.collect_until = now + self.timing.health_timeout
            new = self.workers.get(watch.wid)
            self._ping_now([*self._canary_old_workers(watch), *([new] if new is not None else [])], now)
            return
        new = self.workers.get(watch.wid)
        if new is None:
            return  # its exit is handled by _exited
        verdict = watch.verdict(self.workers, self.canary_rules)
        if verdict is None:
            if new.kill_reason is None:  # its serving loop does not answer: as the health check would, kill it
                self._kill(new, f"no pong within health_timeout ({self.timing.health_timeout:g}s)", out, Cause.HEALTH)
            self._canary_rollback(new, f"canary: the canary did not report its counts within health_timeout "
                                  f"({self.timing.health_timeout:g}s) after its window", now, out)
            return
        if not verdict.ok:
            out.append(ev.CanaryJudged(new.wid, verdict, f"generation {new.generation} rolled back: {verdict.reason}"))
            self._canary_rollback(new, f"canary: {verdict.reason}", now, out)
            return
        out.append(ev.CanaryJudged(new.wid, verdict, f"generation {new.generation} passed: {verdict.reason}"))
        out.append(ev.CapShare(new.wid, False))
        roll = self.roll
        assert roll is not None
        roll.canary, roll.canary_done = None, True
        self._roll_slot_switch(new, now, out)

    def _canary_rollback(self, w: Worker, reason: str, now: float, out: list[ev.Action]) -> None:
        """The canary did worse (or died): it drains, the old workers keep serving, the reload fails."""
        roll = self.roll
        assert roll is not None
        roll.canary, roll.canary_done = None, True
        if w.wid in self.workers and w.kill_reason is None:
            self._retire(w, now, "canary rolled back", out, Cause.RELOAD)
            roll.failed = reason  # the reload fails when the canary has stopped accepting (_stopped_accepting)
            return
        self._roll_failed(reason, now, out)
