"""Hand-made hostile requests (tests/hostile/cases.py), sent raw to a WSGI and an ASGI pool: each gets the answer
it must, and a refused request never reaches the app."""

from __future__ import annotations

import pytest

from tests.hostile import granian
from tests.hostile.cases import CASES, Case
from tests.hostile.conftest import HostilePool, send_raw


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_request_gets_its_answer(hostile: HostilePool, case: Case) -> None:
    status, then, seen = case.status, case.then, case.seen
    if hostile.interface == "granian":
        if case.name in granian.SKIPPED:
            pytest.skip(granian.SKIPPED[case.name])
        if case.name in granian.CASES:  # granian's own answer (tests/hostile/granian.py says why)
            differs = granian.CASES[case.name]
            status, then, seen = differs.status, case.then if differs.then is None else differs.then, None
    before = hostile.calls()
    answers = send_raw(hostile.port, case.data, answers=1 + len(then))
    first = answers[0]
    assert first.status == status, (first.status, first.raw[:300])
    if status == 200:
        assert first.seen is not None, f"the answer did not come from the app: {first.raw[:300]!r}"
        if seen is not None:
            assert seen(first.headers, first.seen), first.seen
    else:
        assert first.seen is None, f"a refused request reached the app: {first.seen}"
    statuses = [answer.status for answer in answers[1:]]
    assert statuses == list(then)[: len(statuses)] and (not then or statuses[-1:] == [then[-1]]), statuses
    called = hostile.calls() - before
    if status == 200:
        assert called == 1 + then.count(200)
    elif case.body_error and hostile.interface == "asgi":
        assert called <= 1  # called once its head was in; it saw http.disconnect, never the bad framing
    else:
        assert called == 0, f"the app was called {called} time(s) with a request that was refused"
