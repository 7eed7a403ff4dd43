"""What the policy's reports say when a process ends: a stop corepool asked for is not an error, an unexpected end
still says how it ended; counts are singular when they are one."""

from __future__ import annotations

from corepool import events as ev
from corepool import exits
from corepool import policy as p
from tests.unit.test_policy import EXITED_0, KILLED, Harness, kinds
from tests.unit.test_policy_preload import preload_harness, running


def messages(out: list[ev.Action], event: str) -> list[str]:
    """What the log says for ``event``; a worker's end is "exit" (as expected) or "death"."""
    ends = [a for a in out if isinstance(a, ev.WorkerEnded) and ("exit" if a.expected else "death") == event]
    return [r.message for r in kinds(out, ev.Report) if isinstance(r, ev.Report) and r.event == event] + [
        a.message for a in ends]


def reloaded(h: Harness) -> list[int]:
    """Roll a running preload pool to generation 2; the old workers' ids."""
    old = h.ready()
    h.feed(ev.ReloadRequested(1.0))
    h.feed(ev.LoaderReady(2, 2.0))
    h.ready_all()
    h.ready_all()
    h.drained()
    return old


def test_a_retired_loader_and_its_drained_workers_stopped_as_told() -> None:
    h = preload_harness()
    running(h)
    old = reloaded(h)
    out = h.feed(ev.LoaderExited(1, exits.killed("SIGTERM"), 3.0))
    out += h.exit(old[0], EXITED_0)
    assert messages(out, "loader") == ["loader None of generation 1 stopped (retired)"]  # no pid in the harness
    (line,) = messages(out, "exit")
    assert line.endswith("generation 1) stopped (reload)") and "exited" not in line


def test_an_unexpected_end_is_still_an_exit_with_its_cause() -> None:
    h = preload_harness()
    running(h)
    old = reloaded(h)
    out = h.feed(ev.LoaderExited(1, exits.killed("SIGSEGV"), 3.0))
    out += h.exit(old[0], KILLED)
    assert messages(out, "loader") == ["loader None of generation 1 exited: killed by SIGSEGV"]
    (line,) = messages(out, "exit")
    assert line.endswith("exited: killed by SIGKILL")


def test_a_stop_says_pool_stopping() -> None:
    h = preload_harness(workers=1)
    running(h)
    (wid,) = h.ready()
    h.feed(ev.StopRequested(5.0))
    out = h.feed(ev.LoaderExited(1, exits.killed("SIGTERM"), 5.1)) + h.exit(wid, EXITED_0)
    assert messages(out, "loader") == ["loader None of generation 1 stopped (pool stopping)"]
    assert messages(out, "exit")[0].endswith("stopped (stop)")


def test_counted() -> None:
    assert [p.counted(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]


def test_rolling_one_worker_is_singular() -> None:
    h = preload_harness(workers=1)
    running(h)
    assert messages(h.feed(ev.ReloadRequested(1.0)), "reload") == ["reload requested: rolling 1 worker to generation 2"]
