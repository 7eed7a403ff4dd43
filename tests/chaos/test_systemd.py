"""SIGKILL of the primary under the sandboxed systemd (tests/systemd): with a socket unit, and with the sockets kept
in systemd's fd store (no socket unit), no connection is refused and the service comes back.

What it costs is a figure, not an assertion (docs/robustness.md, "SIGKILL of the primary"): systemd then SIGKILLs
the rest of the cgroup (KillMode=mixed), so the requests the workers held are lost. The summary line gives them
(``lost_in_flight``: their connection closed or reset with no answer) apart from ``refused`` connections, and the
longest wait of a request that got its answer (the time the service took to come back).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.chaos.harness import Clients, describe, summary
from tests.systemd.conftest import SandboxFactory, corepool_venv, sandbox_factory  # noqa: F401 - fixtures
from tests.systemd.test_units import CONFIG, NAME, SERVICE, SOCKET, activate, install

pytestmark = pytest.mark.systemd


@pytest.mark.parametrize("sockets", ["socket unit", "fd store"])
def test_sigkill_of_the_primary_refuses_nothing(sandbox_factory: SandboxFactory, corepool_venv: Path,  # noqa: F811
                                                sockets: str) -> None:
    sb = sandbox_factory({})
    pool = install(sb, corepool_venv, socket=sockets == "socket unit")
    if sockets == "socket unit":
        sb.systemctl("start", SOCKET)
        activate(pool)
    else:  # the service on its own: corepool binds the port itself and keeps the socket in systemd's fd store
        text = (sb.unit_dir / "corepool@.service").read_text()
        text = re.sub(r"^(Requires|After)=corepool@%i\.socket.*$", "", text, flags=re.MULTILINE)
        (sb.unit_dir / "corepool@.service").write_text(text)
        config = CONFIG.format(app="switchable:app", app_dir=pool.files / "apps")
        sb.write_file(f"etc/{NAME}.toml", config + f'bind = ["127.0.0.1:{pool.port}"]\n')
        sb.daemon_reload()
        sb.systemctl("start", "--no-block", SERVICE)
        pool.wait_serving()
    main = pool.main_pid()
    started = time.monotonic()
    with Clients(pool.port, keepalive=4, fresh=4) as load:
        time.sleep(0.5)
        sb.kill(main, "SIGKILL")
        sb.wait_for(lambda: pool.nrestarts() >= 1, 20, what="systemd to restart the service")
        after = pool.wait_serving()
        time.sleep(0.5)
    tally = load.stop()
    summary(f"SIGKILL of the primary under systemd ({sockets})", time.monotonic() - started,
            requests=tally.line(), refused=tally.refused, lost_in_flight=tally.dropped, restarts=pool.nrestarts(),
            after=describe(after))
    assert pool.main_pid() != main
    assert tally.refused == 0, tally.errors
    assert tally.ok > 20
