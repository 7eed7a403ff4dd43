"""Preload mode: one loader per generation imports the app once; workers are forked from it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support import get_json


@pytest.fixture
def preload_only(mode: str) -> None:
    if mode != "preload":
        pytest.skip("preload mode only")


@pytest.mark.usefixtures("preload_only")
def test_preload_workers_inherit_the_app_frozen(pool_factory: Any) -> None:
    preload = pool_factory("switchable:app", workers=2).start()
    lazy = pool_factory("switchable:app", "--mode", "lazy", workers=2).start()
    frozen_preload = {get_json(preload.port)["gc_frozen"] for _ in range(10)}
    frozen_lazy = {get_json(lazy.port)["gc_frozen"] for _ in range(10)}
    # Both freeze what the primary imported before forking; only preload workers also inherit the app frozen.
    assert min(frozen_lazy) > 0 and min(frozen_preload) > max(frozen_lazy)
    (loader,) = preload.status()["loaders"]
    assert loader["generation"] == 1 and loader["ready"]
    assert lazy.status()["loaders"] == []


@pytest.mark.usefixtures("preload_only")
def test_broken_reload_rolls_back_before_any_worker_is_forked(pool_factory: Any, tmp_path: Path) -> None:
    switch = tmp_path / "switch"
    switch.write_text("ok")
    pool = pool_factory("switchable:app", workers=2, env={"SWITCH_FILE": str(switch)}).start()
    switch.write_text("broken")
    out = pool.ctl("reload", "--wait", "--timeout", "60")
    assert out.returncode == 1 and "generation 2 failed to load" in out.stderr
    assert "spawned (slot 0, generation 2)" not in pool.log()
    assert [x["generation"] for x in pool.status()["loaders"]] == [1]


@pytest.mark.usefixtures("preload_only")
def test_crash_after_a_rolled_back_reload_is_replaced_from_the_last_good_generation(
    pool_factory: Any, tmp_path: Path
) -> None:
    switch = tmp_path / "switch"
    switch.write_text("ok")
    pool = pool_factory("switchable:app", workers=2, env={"SWITCH_FILE": str(switch)}).start()
    switch.write_text("broken")
    assert pool.ctl("reload", "--wait", "--timeout", "60").returncode == 1
    switch.write_text("v2")  # the code on disk changed again, but nobody asked for a reload
    victim = sorted(pool.pids())[0]
    os.kill(victim, signal.SIGKILL)
    pool.wait_for(lambda s: s["workers_ready"] == 2 and victim not in {w["pid"] for w in s["workers"]}, 15)
    answers = [get_json(pool.port) for _ in range(30)]
    assert {a["version"] for a in answers} == {"ok"}
    assert {a["generation"] for a in answers} == {1}


@pytest.mark.usefixtures("preload_only")
def test_successful_reload_retires_the_old_loader(pool_factory: Any) -> None:
    pool = pool_factory("corepool.demo:app", workers=2).start()
    (old,) = pool.status()["loaders"]
    assert pool.ctl("reload", "--wait", "--timeout", "60").returncode == 0
    status = pool.wait_for(lambda s: [x["generation"] for x in s["loaders"]] == [2], 10, "old loader gone")
    assert status["loaders"][0]["pid"] != old["pid"]
