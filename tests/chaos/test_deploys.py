"""Bad deploys and reload storms under load (issue 8 item 5): the old generation keeps serving, 0 failed requests.

The app is tests/apps/chaos_asgi.py; the file in $CHAOS_SWITCH says what the next import does.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.harness import Clients, control, describe, forks, summary, wait_settled


def _pool(pool_factory: Any, tmp_path: Path, *flags: str) -> tuple[Any, Path]:
    switch = tmp_path / "switch"
    switch.write_text("ok")
    pool = pool_factory("chaos_asgi:app", "--boot-timeout", "3", *flags, workers=2,
                        env={"CHAOS_SWITCH": str(switch)}).start()
    return pool, switch


@pytest.mark.parametrize("deploy", ["broken", "hang"])
def test_deploy_that_cannot_boot_rolls_back(pool_factory: Any, tmp_path: Path, deploy: str) -> None:
    """New code that fails to import, or hangs importing (boot_timeout): reload --wait exits 1, nothing fails."""
    pool, switch = _pool(pool_factory, tmp_path)
    before = pool.pids()
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        switch.write_text(deploy)
        out = pool.ctl("reload", "--wait", "--timeout", "60")
        time.sleep(0.5)
    tally = load.stop()
    after = wait_settled(pool.control)
    summary(f"deploy that is {deploy}", time.monotonic() - started, reload=f"exit {out.returncode}",
            ordinary=tally.line(), served_by_old=tally.pids <= before, forks=forks(pool.log()), after=describe(after))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "rolled back" in out.stderr
    assert tally.failed == 0 and tally.dropped == 0, tally.errors
    assert tally.pids <= before and pool.pids() == before


def test_deploy_that_fails_every_request(pool_factory: Any, tmp_path: Path) -> None:
    """New code that imports but answers every request with a 500 rolls through today: issue 11's canary would
    stop it. Recorded; what must hold already: the reload ends, no connection is dropped or refused."""
    pool, switch = _pool(pool_factory, tmp_path)
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        switch.write_text("fail")
        out = pool.ctl("reload", "--wait", "--timeout", "60")
        time.sleep(0.5)
    tally = load.stop()
    after = wait_settled(pool.control)
    summary("deploy that fails every request", time.monotonic() - started, reload=f"exit {out.returncode}",
            ordinary=tally.line(), statuses=tally.statuses, after=describe(after))
    assert out.returncode in (0, 1), (out.stdout, out.stderr)
    assert tally.dropped == 0, tally.errors
    assert set(tally.statuses) <= {500}, tally.errors


def test_crash_loop_at_boot_is_no_fork_storm(pool_factory: Any, tmp_path: Path) -> None:
    """Every worker of a reload exits at its start-up: the reload rolls back without a fork storm and the old
    generation keeps serving."""
    pool, switch = _pool(pool_factory, tmp_path)
    before = pool.pids()
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        forks_before = forks(pool.log())
        switch.write_text("crash")
        out = pool.ctl("reload", "--wait", "--timeout", "60")
        time.sleep(3)  # and nothing keeps forking after the roll back
        crash_forks = forks(pool.log()) - forks_before
    tally = load.stop()
    after = wait_settled(pool.control)
    summary("crash loop at boot", time.monotonic() - started, reload=f"exit {out.returncode}",
            forks_of_the_bad_generation=crash_forks, ordinary=tally.line(), after=describe(after))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert crash_forks <= 5, f"{crash_forks} forks for a generation that cannot start: a fork storm"
    assert tally.failed == 0 and tally.dropped == 0, tally.errors
    assert pool.pids() == before


def test_twenty_reloads_in_a_row(pool_factory: Any, tmp_path: Path) -> None:
    """20 reloads sent back to back under load: 0 failed requests; the pool ends on generation 21 or what
    coalescing queued reloads gives."""
    pool, _switch = _pool(pool_factory, tmp_path)
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.3)
        answers = [control(pool.control, {"cmd": "reload"}) for _ in range(19)]
        out = pool.ctl("reload", "--wait", "--timeout", "120")  # the 20th: returns once everything queued is done
        after = wait_settled(pool.control, timeout=60)
        time.sleep(0.3)
    tally = load.stop()
    summary("20 reloads in a row (the last with --wait)", time.monotonic() - started, reload=f"exit {out.returncode}",
            generations=after["generation"], ordinary=tally.line(), workers_served=len(tally.pids),
            forks=forks(pool.log()), after=describe(after))
    assert all(a.get("ok") for a in answers), answers
    assert out.returncode == 0, out.stderr
    assert 2 < after["generation"] <= 21
    assert tally.failed == 0 and tally.dropped == 0, tally.errors
