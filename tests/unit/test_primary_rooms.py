"""The primary's pure rooms: a channel's messages as events (messages.py), and the replies of clients answered
later (waiters.py)."""

from __future__ import annotations

from typing import Any

from corepool import events as ev
from corepool import hostdrain, messages, waiters
from tests.unit.test_policy import Harness


def test_a_pong_becomes_an_event_and_a_malformed_one_does_not() -> None:
    good = messages.pong(3, {"t": "pong", "seq": 1, "requests": 5, "inflight": 1, "oldest": [2.5, "GET /" + "x" * 300],
                             "connections": 4}, 1.0, 1024)
    assert good is not None and (good.requests, good.inflight, good.oldest_age, good.rss) == (5, 1, 2.5, 1024)
    assert good.connections == 4 and good.oldest is not None and len(good.oldest) == messages.MAX_LABEL
    for bad in ({"seq": "1", "requests": 5}, {"requests": "5"}, {"requests": 1, "inflight": 1.5},
                {"requests": 1, "oldest": [1]}, {"requests": 1, "traffic": "lots"}):
        assert messages.pong(3, {"t": "pong", **bad}, 1.0, None) is None, bad
    odd = messages.pong(3, {"t": "pong", "requests": 1, "connections": True}, 1.0, None)
    assert odd is not None and odd.connections is None


def test_a_workers_messages_as_events() -> None:
    errors = messages.BootErrors()
    assert messages.from_worker(1, 9, {"t": "ready"}, 1.0, errors) == ev.WorkerReady(1, 1.0)
    assert messages.from_worker(1, 9, {"t": "pong", "requests": "x"}, 1.0, errors) == ev.WorkerMisbehaved(
        1, "a malformed pong", 1.0)
    assert isinstance(messages.from_worker(1, 9, {"t": "what"}, 1.0, errors), ev.WorkerMisbehaved)
    boot = messages.from_loader(2, {"t": "boot_error", "error": "ImportError", "detail": "tb"}, 1.0, errors)
    assert boot == ev.LoaderBootError(2, "ImportError", 1.0) and errors.seen == {"tb"}
    assert messages.from_loader(2, {"t": "forked"}, 1.0, errors) is None


def replies() -> tuple[list[dict[str, Any]], waiters.Pending]:
    got: list[dict[str, Any]] = []
    return got, waiters.Pending("reload", got.append, wait=True)


def test_reload_waiters_are_answered_when_their_roll_ends() -> None:
    h = Harness(workers=1)
    h.start()
    h.ready_all()
    reloads = waiters.ReloadWaiters()
    got, pending = replies()
    tickets = waiters.Tickets()
    ticket = tickets.issue(pending)
    for action in h.feed(ev.ReloadRequested(1.0, ticket=ticket)):
        if isinstance(action, ev.Answer):
            found = tickets.take(action.ticket)
            assert found is pending and tickets.take(action.ticket) is None
            waiters.answer(found, action, h.policy, reloads)
    assert not got and reloads.by_generation == {2: [got.append]}
    reloads.finished(2, True, "all workers run generation 2")
    assert got == [{"ok": True, "generation": 2, "reason": "all workers run generation 2"}]


def test_a_refusal_is_one_shape() -> None:
    got, pending = replies()
    waiters.answer(pending, ev.Answer(1, refused=hostdrain.STOPPING), Harness().policy, waiters.ReloadWaiters())
    assert got == [{"ok": False, "error": "the pool is stopping"}]


def test_status_waiters_answer_when_pinged_workers_did_or_time_is_up() -> None:
    got: list[dict[str, Any]] = []
    sw = waiters.StatusWaiters()
    sw.add(0.0, {1, 2}, got.append)
    sw.answer(0.1, lambda wid: wid == 2, lambda: {"n": 1})
    assert not got and sw.pending[0].waiting == {2}
    sw.answer(waiters.STATUS_WAIT, lambda wid: True, lambda: {"n": 2})
    assert got == [{"ok": True, "status": {"n": 2}}] and not sw.pending
