"""``health_bind`` and ``metrics_bind`` sockets corepool binds itself outlive a crashed primary (systemd's fd store).

Under a real systemd 252 (sandbox.py), with the shipped units: the primary is SIGKILLed while a client polls the
health endpoint; systemd restarts the service and passes the stored sockets back (``LISTEN_FDNAMES``
``corepool.health``, ``corepool.metrics``), so the checks wait in the kernel's queue and are answered, never
refused. Both with the app's socket from a socket unit and without one (then the app's socket is stored too).
A health socket from a socket unit (``FileDescriptorName=health``) is tests/systemd/test_drain_stop.py's.
"""

from __future__ import annotations

import http.client
import re
import time
from pathlib import Path

import pytest

from tests.support import free_port
from tests.systemd.test_units import CONFIG, NAME, SERVICE, SOCKET, Pool, SandboxFactory, install


def get(port: int, path: str, timeout: float = 20) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _start(sandbox_factory: SandboxFactory, venv: Path, socket_unit: bool) -> tuple[Pool, int, int]:
    sb = sandbox_factory({})
    pool = install(sb, venv, socket=socket_unit)
    hport, mport = free_port(), free_port()
    config = CONFIG.format(app="switchable:app", app_dir=pool.files / "apps")
    config += f'health_bind = "127.0.0.1:{hport}"\nmetrics_bind = "127.0.0.1:{mport}"\n'
    if not socket_unit:  # the same service started on its own: corepool binds the app's socket too
        config += f'bind = ["127.0.0.1:{pool.port}"]\n'
        text = (sb.unit_dir / "corepool@.service").read_text()
        text = re.sub(r"^(Requires|After)=corepool@%i\.socket.*$", "", text, flags=re.MULTILINE)
        (sb.unit_dir / "corepool@.service").write_text(text)
        sb.daemon_reload()
    sb.write_file(f"etc/{NAME}.toml", config)
    if socket_unit:
        sb.systemctl("start", SOCKET)
        get(pool.port, "/", timeout=20)  # the first connection starts the service
    else:
        sb.systemctl("start", "--no-block", SERVICE)
    pool.wait_serving()
    return pool, hport, mport


@pytest.mark.parametrize("socket_unit", [True, False], ids=["app-socket-unit", "no-socket-unit"])
def test_sigkilled_primary_keeps_health_and_metrics_sockets(sandbox_factory: SandboxFactory, corepool_venv: Path,
                                                            socket_unit: bool) -> None:
    pool, hport, mport = _start(sandbox_factory, corepool_venv, socket_unit)
    sb = pool.sb
    status = pool.status()
    assert status["health"]["address"] == f"127.0.0.1:{hport}" and status["metrics"] == f"127.0.0.1:{mport}"
    stored = 2 if socket_unit else 3  # corepool.health, corepool.metrics (and corepool.http)
    assert int(sb.show(SERVICE, "NFileDescriptorStore")) == stored
    assert get(hport, "/") == 200 and get(mport, "/metrics") == 200

    main = pool.main_pid()
    answers: list[int] = []
    refused: list[BaseException] = []
    sb.kill(main, "SIGKILL")
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and (not answers or answers[-1] != 200 or pool.main_pid() == main):
        try:
            answers.append(get(hport, "/"))  # waits in the kernel's queue while no primary accepts
        except OSError as exc:
            refused.append(exc)
        time.sleep(0.05)
    assert refused == [], refused[:3]
    assert pool.main_pid() != main and pool.nrestarts() == 1
    assert answers[-1] == 200 and set(answers) <= {200, 503}, answers[-5:]
    assert get(mport, "/metrics") == 200
    assert int(sb.show(SERVICE, "NFileDescriptorStore")) == stored  # the same sockets, stored again
