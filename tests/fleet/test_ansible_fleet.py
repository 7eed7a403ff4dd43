"""The Ansible play that docs/operations.md shows (etc/ansible/fleet-roll.yml, this very file) rolls a fleet
(issue 18 item 5): two pools as two inventory hosts with ``ansible_connection: local``, each host's variables
pointing at its own pool's app directory and control socket, behind HAProxy (the ``fleet`` fixture), under
continuous load through it, with zero failed requests through

* a good release: the play installs and reloads host A, and touches host B only once A's ``corepool reload
  --wait`` has returned 0; HAProxy never marks a host down (so no drain is needed around a reload);
* a bad release (a module that fails to import): the play fails at host A, whose reload rolled back (its old
  generation serves); host B is never touched (its files, generation and last reload unchanged);
* the recovery the docs give: the previous release played again on host A alone (``--limit``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.fleet.harness import HAPROXY, HAProxy, Host, deploy, through
from tests.support import Load

PLAY = Path(__file__).parents[2] / "etc" / "ansible" / "fleet-roll.yml"
BIN = Path(sys.executable).parent
# One line per task result with -v: `changed: [a] => {...}`, `fatal: [a]: FAILED! => {...}`.
RESULT = re.compile(r"^(?:ok|changed|fatal): \[(\w+)\](?:: FAILED!)? => (\{.*\})$", re.MULTILINE)

pytestmark = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed (scripts/setup --test)")


def inventory(tmp: Path, hosts: list[Host]) -> Path:
    """The hosts as the play's group `myapp`, each run on this machine, with its own pool's paths."""
    path = tmp / "inventory.yml"
    path.write_text(json.dumps({"myapp": {  # JSON is YAML
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "corepool": str(BIN / "corepool")},
        "hosts": {h.name: {"app_dir": str(h.app_dir), "corepool_control": h.pool.control} for h in hosts},
    }}))
    return path


def play(tmp: Path, hosts: list[Host], release: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                             dict[str, list[dict[str, Any]]]]:
    """Run the play with `release`; its output and each host's task results, in order."""
    home = tmp / "ansible"
    config = tmp / "ansible.cfg"  # empty: Ansible's defaults, whatever /etc/ansible or ~ hold
    config.touch()
    env = {**os.environ, "ANSIBLE_CONFIG": str(config), "ANSIBLE_HOME": str(home),
           "ANSIBLE_LOCAL_TEMP": str(home / "tmp"), "ANSIBLE_REMOTE_TEMP": str(home / "tmp"), "ANSIBLE_NOCOLOR": "1",
           "LC_ALL": "C.UTF-8"}  # ansible-playbook refuses to run in a locale that is not UTF-8
    out = subprocess.run([str(BIN / "ansible-playbook"), "-v", "-i", str(inventory(tmp, hosts)), str(PLAY),
                          "-e", f"myapp_release={release}/", *args],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    results: dict[str, list[dict[str, Any]]] = {}
    for host, data in RESULT.findall(out.stdout):
        results.setdefault(host, []).append(json.loads(data))
    return out, results


def reload_times(results: list[dict[str, Any]]) -> tuple[datetime, datetime]:
    """When the host's `corepool reload --wait` started and returned (the command module's local times)."""
    (reload,) = [r for r in results if "reload" in r.get("cmd", [])]
    return datetime.fromisoformat(reload["start"]), datetime.fromisoformat(reload["end"])


def test_the_docs_ansible_play_rolls_host_by_host_and_stops_at_a_bad_deploy(
        fleet: tuple[list[Host], HAProxy], tmp_path: Path) -> None:
    (a, b), proxy = fleet
    good, bad = tmp_path / "release-2", tmp_path / "release-3"
    deploy(good, "2")
    deploy(bad, "3", broken=True)
    with Load(proxy.port, keepalive=3, fresh=3) as load:
        # 1. A good release: host A installed and reloaded, then host B, gated on A's reload returning 0.
        out, results = play(tmp_path, [a, b], good)
        assert out.returncode == 0, out.stdout + out.stderr
        for h in (a, b):
            status = h.pool.status()
            assert status["generation"] == 2 and status["last_reload"]["ok"], status["last_reload"]
        _, a_returned = reload_times(results["a"])
        b_started, _ = reload_times(results["b"])
        b_installed = datetime.fromtimestamp((b.app_dir / "fleet_app.py").stat().st_mtime)
        assert a_returned <= b_installed <= b_started, (a_returned, b_installed, b_started)
        answers = through(proxy.port)
        assert {x["version"] for x in answers} == {"2"} and {x["host"] for x in answers} == {"a", "b"}
        assert proxy.downs() == {"a": 0, "b": 0}  # health stayed 200 through each host's reload

        # 2. A bad release: the play fails at host A (rolled back, old workers serving); B is not touched.
        b_file = (b.app_dir / "fleet_app.py").stat()
        b_before = b.pool.status()
        out, results = play(tmp_path, [a, b], bad)
        assert out.returncode != 0, out.stdout
        (failure,) = [r for r in results["a"] if r.get("rc")]
        assert "reload failed" in failure["stderr"], failure
        assert "b" not in results, out.stdout
        assert (b.app_dir / "fleet_app.py").stat().st_mtime_ns == b_file.st_mtime_ns
        a_after, b_after = a.pool.status(), b.pool.status()
        assert a_after["generation"] == 2 and a_after["workers_ready"] == 2, a_after
        assert a_after["last_reload"]["ok"] is False, a_after["last_reload"]
        assert b_after["generation"] == b_before["generation"] == 2
        assert b_after["last_reload"] == {**b_before["last_reload"], "ago": b_after["last_reload"]["ago"]}
        answers = through(proxy.port)
        assert {x["version"] for x in answers} == {"2"} and {x["host"] for x in answers} == {"a", "b"}
        assert proxy.downs() == {"a": 0, "b": 0}

        # 3. The docs' recovery: disk made to agree with memory on host A, with the previous release.
        out, results = play(tmp_path, [a, b], good, "--limit", "a")
        assert out.returncode == 0, out.stdout + out.stderr
        assert set(results) == {"a"}
        recovered = a.pool.status()
        assert recovered["last_reload"]["ok"] and recovered["generation"] > a_after["last_reload"]["generation"]
        assert b.pool.status()["generation"] == 2
        assert {x["version"] for x in through(proxy.port)} == {"2"}
    result = load.result
    print(f"ansible fleet: {result.ok} requests through HAProxy, {result.failed} failed; "
          f"HAProxy backend {proxy.backend_counters()}")
    assert result.failed == 0, result.errors[:10]
    assert result.ok > 100
