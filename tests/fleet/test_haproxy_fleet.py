"""A fleet behind a real load balancer (issue 12 item 3): Debian's HAProxy in front of two pools standing in for
two hosts, health-checked on their health sockets, under continuous load through HAProxy, with zero failed
client requests through

* a rolling reload of host A then host B by ``scripts/fleet-roll``, gated on ``corepool reload --wait``;
* a drain and stop of host A (``corepool drain --stop``) and its return;
* a bad deploy (a module that fails to import) that stops the fleet roll at host A: the script exits 1 and
  host B is not touched.

The hosts and the balancer are tests/fleet/harness.py's, started by the ``fleet`` fixture (conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet.harness import HAPROXY, HAProxy, Host, deploy, through
from tests.support import Load

ROLL = Path(__file__).parents[2] / "scripts" / "fleet-roll"

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed (scripts/setup --test)")


def roll(*hosts: Host) -> subprocess.CompletedProcess[str]:
    reload = f"{sys.executable} -m corepool reload --wait --timeout 60 --control {{}}"
    return subprocess.run(["bash", str(ROLL), *[h.pool.control for h in hosts]], env={**os.environ, "RELOAD": reload},
                          capture_output=True, text=True, timeout=150)


def test_fleet_roll_drain_and_bad_deploy_behind_haproxy(fleet: tuple[list[Host], HAProxy]) -> None:
    (a, b), proxy = fleet
    with Load(proxy.port, keepalive=3, fresh=3) as load:
        # 1. A rolling reload of host A, then host B, each gated on `corepool reload --wait`.
        for h in (a, b):
            deploy(h.app_dir, "2")
        out = roll(a, b)
        assert out.returncode == 0, out.stderr
        assert "fleet-roll: all 2 hosts reloaded" in out.stderr
        for h in (a, b):
            status = h.pool.status()
            assert status["generation"] == 2 and status["last_reload"]["ok"], status["last_reload"]
        answers = through(proxy.port)
        assert {x["version"] for x in answers} == {"2"}
        assert {x["host"] for x in answers} == {"a", "b"}

        # 2. Host A drains (HAProxy takes it out), stops, and comes back.
        served_by_a = a.pool.status()["requests"]
        drain = a.pool.ctl("drain", "--stop")
        assert drain.returncode == 0, drain.stderr
        proxy.wait("a", "DOWN")
        assert a.pool.wait_exit() == 0
        assert served_by_a > 0
        ok_before = load.result.ok
        a.pool.log_path = a.pool.tmp / "pool-restarted.log"
        a.pool.start()
        proxy.wait("a", "UP")
        assert load.result.ok > ok_before  # B served meanwhile
        assert {x["host"] for x in through(proxy.port)} == {"a", "b"}

        # 3. A bad deploy: the roll stops at host A (whose old workers keep serving); host B is not touched.
        for h in (a, b):
            deploy(h.app_dir, "3", broken=True)
        b_before = b.pool.status()
        out = roll(a, b)
        assert out.returncode == 1, out.stderr
        assert "reload FAILED" in out.stderr and f"not touched: {b.pool.control}" in out.stderr, out.stderr
        a_after, b_after = a.pool.status(), b.pool.status()
        assert a_after["last_reload"]["ok"] is False and a_after["workers_ready"] == 2, a_after["last_reload"]
        assert b_after["generation"] == b_before["generation"] == 2
        assert b_after["last_reload"] == {**b_before["last_reload"], "ago": b_after["last_reload"]["ago"]}
        assert proxy.states() == {"a": "UP", "b": "UP"}
        answers = through(proxy.port)
        assert {x["version"] for x in answers} == {"2"} and {x["host"] for x in answers} == {"a", "b"}
    result = load.result
    counters = proxy.backend_counters()
    print(f"fleet: {result.ok} requests through HAProxy, {result.failed} failed; HAProxy backend {counters}")
    assert result.failed == 0, result.errors[:10]
    assert result.ok > 100
