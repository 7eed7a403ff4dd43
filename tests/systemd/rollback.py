"""Deploys that roll back, and the check that ``systemctl reload`` of one fails honestly under a real systemd.

Shared by tests/systemd/test_units.py (the host's systemd 252, units/ as shipped) and packaging/scenario.py (the
installed .deb, on 252 and in the Debian 13 root's 257): whatever the version, a reload that rolls back must exit
non-zero, leave the unit active with the old workers serving, and say why in ``systemctl status`` (the STATUS=
line) and in the journal (the primary's reload line and ``corepool reload --wait``'s error from ExecReload=).

A deploy is steered by one file, read when the app is imported: ``$SWITCH_FILE`` for tests/apps/switchable.py,
``$CANARY_FILE`` for tests/apps/canary_app.py (point both at it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support import Load, get_json
from tests.systemd.sandbox import Sandbox

# Short, so that the hang and the canary window cost seconds: a hang is given up after HANG_BOOT_TIMEOUT, and the
# canary judges what it served in CANARY_SECONDS.
HANG_BOOT_TIMEOUT = 4.0
CANARY_SECONDS = 2.0


@dataclass(frozen=True)
class BadDeploy:
    """A deploy of ``app`` that the pool must roll back: it serves ``good``, then ``bad`` is deployed."""

    name: str
    app: str
    config: str  # TOML lines, over the pool's settings (see config_for)
    good: str
    bad: str
    why: str  # what the rollback's reason must say
    load: bool = False  # the canary judges the requests it served: reload under load


BAD_DEPLOYS = (
    BadDeploy("import-error", "switchable:app", "", "ok", "broken",
              "importing switchable raised RuntimeError: switchable: broken on purpose"),
    BadDeploy("hang-at-import", "switchable:app", f"boot_timeout = {HANG_BOOT_TIMEOUT}\n", "ok", "slow:3600",
              f"not imported within boot_timeout ({HANG_BOOT_TIMEOUT:g}s)"),
    BadDeploy("canary-500", "canary_app:app",
              f"canary_seconds = {CANARY_SECONDS}\n", "good", "error", "canary: 5xx rate 100.0%", load=True),
)


def config_for(deploy: BadDeploy, base: str) -> str:
    """The pool's TOML settings ``base`` with the deploy's app and settings in place of theirs."""
    own = f'app = "{deploy.app}"\n' + deploy.config
    keys = {line.partition("=")[0].strip() for line in own.splitlines()}
    kept = [line for line in base.splitlines(keepends=True) if line.partition("=")[0].strip() not in keys]
    return own + "".join(kept)


def check_reload_fails(
    sb: Sandbox,
    service: str,
    port: int,
    deploy: BadDeploy,
    write_switch: Callable[[str], object],
    status: Callable[[], dict[str, Any]],
) -> str:
    """Deploy ``deploy.bad`` to the serving pool ``service`` (127.0.0.1:``port``) and ``systemctl reload`` it;
    raise AssertionError unless it failed honestly. Returns a one-line summary. ``status`` is ``corepool status
    --json`` of the pool, ``write_switch`` writes the deploy's file."""
    before = status()
    old_pids = {w["pid"] for w in before["workers"] if w["state"] == "ready"}
    restarts = sb.show(service, "NRestarts")
    write_switch(deploy.bad)
    t0 = time.monotonic()
    try:
        if deploy.load:
            with Load(port, keepalive=0, fresh=4) as load:
                reload = sb.systemctl("reload", service, check=False, timeout=120)
            result = load.stop()
            assert result.ok > 0 and set(result.errors) <= {"HTTP 500"}, result.errors[:5]  # the canary's 500s only
        else:
            reload = sb.systemctl("reload", service, check=False, timeout=120)
    finally:
        write_switch(deploy.good)
    took = time.monotonic() - t0
    assert reload.returncode != 0, f"{deploy.name}: systemctl reload succeeded although the pool rolled back"
    assert sb.show(service, "ActiveState") == "active", sb.show(service, "ActiveState")
    assert sb.show(service, "NRestarts") == restarts
    after = status()
    assert after["generation"] == before["generation"], (before["generation"], after["generation"])
    assert after["last_reload"]["ok"] is False and deploy.why in after["last_reload"]["reason"], after["last_reload"]
    ready = {w["pid"] for w in after["workers"] if w["state"] == "ready"}
    assert ready == old_pids, f"the old workers {old_pids} should serve on, ready now: {ready}"
    served = {get_json(port, timeout=10)["pid"] for _ in range(10)}
    assert served <= old_pids, f"answered by {served - old_pids}, not an old worker"
    # systemctl status: the STATUS= line says it rolled back and why
    shown = sb.systemctl("status", "--full", "--no-pager", "-n", "0", service, check=False).stdout
    status_line = next((line.strip() for line in shown.splitlines() if line.strip().startswith("Status:")), "")
    assert "last reload rolled back: " in status_line and deploy.why in status_line, shown
    # the journal: the primary's reload line, and corepool reload --wait's error (ExecReload='s stderr)
    messages = [e.get("MESSAGE", "") for e in sb.journal(service)]
    assert any("reload to generation" in m and "rolled back" in m and deploy.why in m for m in messages), messages[-20:]
    assert any(m.startswith("corepool: error: reload failed: rolled back") and deploy.why in m for m in messages), (
        messages[-20:])
    return (f"{deploy.name}: systemctl reload exits {reload.returncode} after {took:.1f} s, {service} active, "
            f"generation {after['generation']} serves on; {status_line[:160]}")
