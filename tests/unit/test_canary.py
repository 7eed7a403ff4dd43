"""The canary: the pure verdict (with hypothesis), the traffic counts it reads, and the pause in the policy's roll."""

from __future__ import annotations

import signal

from hypothesis import given
from hypothesis import strategies as st

from corepool import canary
from corepool import events as ev
from corepool import policy as p
from corepool.canary import MIN_LATENCY_SAMPLES, Rules, judge
from corepool.traffic import BUCKETS, Traffic, bucket_index
from tests.unit.test_policy import EXITED_0, Harness, kinds

RULES = Rules(seconds=10.0, max_error_rate=0.02, max_p99_ratio=2.0)


def served(ok: int = 0, errors: int = 0, seconds: float = 0.004) -> Traffic:
    """``ok`` 200s and ``errors`` 500s, each taking ``seconds``."""
    buckets = [0] * (len(BUCKETS) + 1)
    buckets[bucket_index(seconds)] = ok + errors
    requests = {k: n for k, n in ((("GET", "2xx"), ok), (("GET", "5xx"), errors)) if n}
    return Traffic(requests, tuple(buckets), (ok + errors) * seconds)


# ------------------------------------------------------------------------------------------------ verdict


def test_a_canary_that_answers_500_to_everything_is_rolled_back_with_the_figures() -> None:
    verdict = judge(served(ok=900), served(errors=300), RULES)
    assert not verdict.ok and verdict.failed == ("error_rate",)
    assert "5xx rate 100.0% > 0.0% + 2.0%" in verdict.reason
    assert "(300/300)" in verdict.reason and "(0/900)" in verdict.reason


def test_a_canary_five_times_slower_is_rolled_back_on_p99() -> None:
    verdict = judge(served(ok=900, seconds=0.004), served(ok=300, seconds=0.020), RULES)
    assert not verdict.ok and verdict.failed == ("p99",)
    assert verdict.canary.p99 is not None and verdict.old.p99 is not None
    assert verdict.canary.p99 > 2 * verdict.old.p99


def test_a_canary_like_the_old_generation_passes() -> None:
    verdict = judge(served(ok=900, errors=9), served(ok=300, errors=3), RULES)
    assert verdict.ok and verdict.failed == ()
    assert verdict.reason.startswith("within tolerance")


def test_the_old_generations_own_error_rate_is_the_reference() -> None:
    assert judge(served(ok=500, errors=500), served(ok=50, errors=50), RULES).ok
    assert not judge(served(ok=990, errors=10), served(ok=90, errors=10), RULES).ok  # 10 % vs 1 % + 2 %


def test_a_canary_that_served_nothing_is_not_judged() -> None:
    verdict = judge(served(ok=100), Traffic(), RULES)
    assert verdict.ok and "no request reached the canary" in verdict.reason


def test_p99_needs_enough_requests_in_both_windows() -> None:
    few = MIN_LATENCY_SAMPLES - 1
    assert judge(served(ok=900, seconds=0.001), served(ok=few, seconds=1.0), RULES).ok
    assert judge(served(ok=few, seconds=0.001), served(ok=900, seconds=1.0), RULES).ok
    assert not judge(served(ok=MIN_LATENCY_SAMPLES, seconds=0.001),
                     served(ok=MIN_LATENCY_SAMPLES, seconds=1.0), RULES).ok


counts = st.integers(min_value=0, max_value=10_000)
durations = st.sampled_from([0.0001, 0.003, 0.02, 0.3, 4.0, 100.0])
rules = st.builds(Rules, st.just(10.0), st.floats(0.0, 1.0), st.floats(1.0, 10.0))


@given(counts, counts, durations, counts, counts, durations, rules)
def test_the_verdict_is_exactly_its_two_rules(
    old_ok: int, old_err: int, old_s: float, new_ok: int, new_err: int, new_s: float, r: Rules
) -> None:
    old, new = served(old_ok, old_err, old_s), served(new_ok, new_err, new_s)
    verdict = judge(old, new, r)
    n_old, n_new = old_ok + old_err, new_ok + new_err
    if n_new == 0:
        assert verdict.ok
        return
    rate_new, rate_old = new_err / n_new, (old_err / n_old if n_old else 0.0)
    errors_over = rate_new > rate_old + r.max_error_rate
    slow = min(n_old, n_new) >= MIN_LATENCY_SAMPLES and (new.quantile(0.99) or 0) > (old.quantile(0.99) or 0) * \
        r.max_p99_ratio
    assert verdict.ok == (not errors_over and not slow)
    assert ("error_rate" in verdict.failed) == errors_over
    assert str(new_err) in verdict.reason


@given(counts, counts, durations, rules)
def test_a_canary_identical_to_the_old_generation_always_passes(ok: int, err: int, seconds: float, r: Rules) -> None:
    same = served(ok, err, seconds)
    assert judge(same, same, r).ok


# ---------------------------------------------------------------------------------------------- traffic


samples = st.lists(st.tuples(st.sampled_from(["GET", "POST", "other"]), st.sampled_from(["2xx", "5xx"]),
                             st.floats(0.0, 100.0)), max_size=50)


def build(rows: list[tuple[str, str, float]]) -> Traffic:
    requests: dict[tuple[str, str], int] = {}
    buckets = [0] * (len(BUCKETS) + 1)
    for method, cls_, seconds in rows:
        requests[(method, cls_)] = requests.get((method, cls_), 0) + 1
        buckets[bucket_index(seconds)] += 1
    return Traffic(requests, tuple(buckets), sum(s for _, _, s in rows))


@given(samples, samples)
def test_traffic_travels_adds_and_subtracts(first: list[tuple[str, str, float]],
                                            later: list[tuple[str, str, float]]) -> None:
    a, b = build(first), build(first + later)
    wire = Traffic.from_wire(b.to_wire())
    assert wire is not None and wire.requests == b.requests and wire.buckets == b.buckets
    delta = b.since(a)
    assert delta.total == len(later) and sum(delta.buckets) == len(later)
    assert (a + delta).requests == {k: n for k, n in b.requests.items() if n}


@given(samples)
def test_a_quantile_lies_within_the_bucket_of_the_sample_it_ranks(rows: list[tuple[str, str, float]]) -> None:
    t = build(rows)
    q = t.quantile(0.99)
    if not rows:
        assert q is None
        return
    assert q is not None and 0.0 <= q <= BUCKETS[-1]
    ordered = sorted(min(s, BUCKETS[-1]) for _, _, s in rows)
    exact = ordered[max(0, -(-99 * len(ordered) // 100) - 1)]
    i = bucket_index(exact)
    lower = 0.0 if i == 0 else BUCKETS[i - 1]
    assert lower <= q <= (BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1])


def test_what_a_worker_does_not_send_is_refused() -> None:
    good = served(ok=3).to_wire()
    assert Traffic.from_wire(good) is not None
    for bad in (None, [], {**good, "buckets": [1]}, {**good, "by": [["GET", "9xx", 1]]},
                {**good, "by": [["BREW", "2xx", 1]]}, {**good, "sum": -1}, {**good, "buckets": [-1] * 21},
                {**good, "sum": float("nan")}, {**good, "by": [["GET", "2xx", True]]}):
        assert Traffic.from_wire(bad) is None


# ----------------------------------------------------------------------------------------------- policy


class CanaryHarness(Harness):
    def __init__(self, workers: int = 2) -> None:
        super().__init__(workers=workers, health_interval=30.0, health_timeout=5.0)
        self.policy.canary_rules = RULES

    def pong(self, wid: int, counts: Traffic) -> list[ev.Action]:
        w = self.policy.workers[wid]
        return self.feed(ev.Pong(wid, w.ping_seq if w.ping_sent_at is not None else None, counts.total, self.now,
                                 traffic=counts))

    def running(self) -> list[int]:
        self.start()
        self.ready_all()
        return self.ready()

    def reload_to_canary(self) -> int:
        self.feed(ev.ReloadRequested(self.now))
        (new,) = self.booting()
        self.now += 1
        out = self.feed(ev.WorkerReady(new, self.now))
        assert [a.event for a in kinds(out, ev.Report)] == ["ready", "canary"]
        assert not kinds(out, ev.Signal), "the canary's slot keeps its old worker while it is watched"
        assert not self.booting(), "the roll pauses"
        return new


def watch(h: CanaryHarness, old: list[int], new: int, old_window: Traffic, new_window: Traffic) -> list[ev.Action]:
    """Old workers report at the window's start and end; the canary at the end."""
    for wid in old:
        h.pong(wid, served(ok=1000))
    h.now += RULES.seconds
    pings = kinds(h.at(h.now), ev.Ping)
    assert {a.wid for a in pings} == {*old, new}, "the window's end asks everyone for fresh counts"
    out: list[ev.Action] = []
    for wid in old:
        out += h.pong(wid, served(ok=1000) + old_window)
    out += h.pong(new, new_window)
    return out


def test_a_good_canary_lets_the_roll_go_on() -> None:
    h = CanaryHarness()
    old = h.running()
    new = h.reload_to_canary()
    out = watch(h, old, new, served(ok=400), served(ok=200))
    (judged,) = kinds(out, ev.CanaryJudged)
    assert judged.verdict.ok and judged.verdict.old.requests == 800  # type: ignore[attr-defined]
    assert len(kinds(out, ev.Spawn)) == 1, "the next slot rolls"
    assert [a.signum for a in kinds(out, ev.Signal)] == [signal.SIGTERM]  # the canary's slot's old worker
    h.ready_all()
    h.drained()
    for wid in old:
        h.exit(wid, EXITED_0)
    assert h.policy.last_reload is not None and h.policy.last_reload.ok


def test_a_failing_canary_is_drained_and_the_reload_fails_with_the_figures() -> None:
    h = CanaryHarness(workers=3)
    old = h.running()
    new = h.reload_to_canary()
    out = watch(h, old, new, served(ok=400), served(errors=200))
    assert [(a.wid, a.signum) for a in kinds(out, ev.Signal)] == [(new, signal.SIGTERM)]
    # The reload fails only once the canary has stopped accepting: after `reload --wait` returned, a client
    # never reaches the rolled-back generation.
    assert not kinds(out, ev.ReloadFinished) and h.policy.roll is not None
    assert h.policy.next_deadline() is not None, "its graceful_timeout bounds the wait"
    out += h.drained()
    (finished,) = kinds(out, ev.ReloadFinished)
    assert not finished.ok and "canary: 5xx rate 100.0%" in finished.reason and "(200/200)" in finished.reason
    assert not kinds(out, ev.Spawn), "the old workers never stopped serving"
    assert sorted(h.ready()) == sorted(old)
    assert h.policy.generation == 1 and h.policy.roll is None


def test_a_canary_that_dies_fails_the_reload_at_once() -> None:
    h = CanaryHarness()
    old = h.running()
    new = h.reload_to_canary()
    out = h.exit(new)
    (finished,) = kinds(out, ev.ReloadFinished)
    assert not finished.ok and "the canary worker died" in finished.reason
    assert sorted(h.ready()) == sorted(old) and not kinds(out, ev.Spawn)


def test_a_worker_that_never_reports_leaves_the_judgement_to_the_deadline() -> None:
    h = CanaryHarness()
    old = h.running()
    new = h.reload_to_canary()
    h.pong(old[0], served(ok=10))
    h.now += RULES.seconds
    h.at(h.now)
    h.pong(new, served(errors=50))
    assert h.policy.roll is not None and h.policy.roll.canary is not None, "waits for the old worker's counts"
    assert h.policy.next_deadline() == h.now + 5.0
    out = h.at(h.now + 5.0)
    assert not kinds(out, ev.ReloadFinished), "not before the canary stopped accepting"
    (finished,) = kinds(h.exit(new, EXITED_0), ev.ReloadFinished)
    assert not finished.ok  # a canary that exits without reporting its drain ends the wait too


def test_without_canary_seconds_the_roll_never_pauses() -> None:
    h = Harness()
    h.start()
    h.ready_all()
    h.feed(ev.ReloadRequested(h.now))
    (new,) = h.booting()
    out = h.feed(ev.WorkerReady(new, h.now))
    assert not [a for a in kinds(out, ev.Report) if a.event == "canary"]
    assert len(kinds(out, ev.Spawn)) == 1


def test_the_watch_is_plain_state() -> None:
    w = canary.Watch(1, 0.0, 10.0)
    assert w.base == {} and w.collect_until is None
    assert p.Roll(2, []).canary is None


def test_a_canary_silent_at_the_end_of_its_window_is_rolled_back() -> None:
    h = CanaryHarness()
    old = h.running()
    new = h.reload_to_canary()
    for wid in old:
        h.pong(wid, served(ok=10))
    h.now += RULES.seconds
    h.at(h.now)
    for wid in old:
        h.pong(wid, served(ok=20))
    assert h.policy.roll is not None, "waits for the canary"
    out = h.at(h.now + 5.0)
    (finished,) = kinds(out, ev.ReloadFinished)
    assert not finished.ok and "did not report its counts" in finished.reason
    assert (new, signal.SIGKILL) in [(a.wid, a.signum) for a in kinds(out, ev.Signal)]
