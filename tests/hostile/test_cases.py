"""Hand-made hostile requests (tests/hostile/cases.py), sent raw to a WSGI and an ASGI pool: each gets the answer
it must, and a refused request never reaches the app."""

from __future__ import annotations

import pytest

from tests.hostile.cases import CASES, Case
from tests.hostile.conftest import HostilePool, send_raw


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_hostile_request_gets_its_answer(hostile: HostilePool, case: Case) -> None:
    before = hostile.calls()
    answers = send_raw(hostile.port, case.data, answers=1 + len(case.then))
    first = answers[0]
    assert first.status == case.status, (first.status, first.raw[:300])
    if case.status == 200:
        assert first.seen is not None, f"the answer did not come from the app: {first.raw[:300]!r}"
        if case.seen is not None:
            assert case.seen(first.headers, first.seen), first.seen
    else:
        assert first.seen is None, f"a refused request reached the app: {first.seen}"
    statuses = [answer.status for answer in answers[1:]]
    assert statuses == list(case.then)[: len(statuses)] and (not case.then or statuses[-1:] == [None]), statuses
    called = hostile.calls() - before
    if case.status == 200:
        assert called == 1
    elif case.body_error and hostile.interface == "asgi":
        assert called <= 1  # called once its head was in; it saw http.disconnect, never the bad framing
    else:
        assert called == 0, f"the app was called {called} time(s) with a request that was refused"
