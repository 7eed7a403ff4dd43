"""Lifecycle hooks run in the right process at the right time; a failing post_fork is a boot failure."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

HOOKS = ("--post-fork", "hooks_app:post_fork", "--worker-exit", "hooks_app:worker_exit",
         "--when-ready", "hooks_app:when_ready", "--on-reload", "hooks_app:on_reload")


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_hooks_run_in_workers_and_primary(pool_factory: Any, tmp_path: Path) -> None:
    log = tmp_path / "hooks.jsonl"
    pool = pool_factory("hooks_app:app", *HOOKS, workers=2, env={"HOOKS_LOG": str(log)}).start()
    workers = pool.pids()
    assert pool.ctl("reload", "--wait").returncode == 0
    pool.signal(signal.SIGTERM)
    assert pool.wait_exit() == 0, pool.log()
    seen = records(log)
    forks = [r for r in seen if r["hook"] == "post_fork"]
    assert {r["pid"] for r in forks if r["generation"] == 1} == workers, "post_fork runs in each worker"
    assert sorted(r["slot"] for r in forks if r["generation"] == 2) == [0, 1]
    exits = [r for r in seen if r["hook"] == "worker_exit"]
    assert len(exits) == 4 and {r["pid"] for r in exits} == {r["pid"] for r in forks}
    (ready,) = [r for r in seen if r["hook"] == "when_ready"]
    assert ready["pid"] == pool.pid and ready["phase"] == "running" and ready["workers"] == 2
    (reload,) = [r for r in seen if r["hook"] == "on_reload"]
    assert reload == {"pid": pool.pid, "hook": "on_reload", "generation": 2}


def test_a_failing_post_fork_is_a_boot_failure(pool_factory: Any, tmp_path: Path) -> None:
    pool = pool_factory("hooks_app:app", "--post-fork", "hooks_app:broken_post_fork", workers=1,
                        env={"HOOKS_LOG": str(tmp_path / "hooks.jsonl")})
    pool.start(wait=False)
    assert pool.wait_exit() == 1
    log = pool.log()
    assert "post_fork hook raised RuntimeError: cannot reach the database" in log
    assert "Traceback" in log


def test_a_hook_that_cannot_be_imported_stops_the_start(pool_factory: Any) -> None:
    pool = pool_factory("hooks_app:app", "--when-ready", "hooks_app:nothing_here", workers=1)
    pool.start(wait=False)
    assert pool.wait_exit() == 1
    assert "when_ready hook" in pool.log() and "has no attribute" in pool.log()
    assert not os.path.exists(pool.control)
