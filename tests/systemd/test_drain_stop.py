"""The health endpoint under a real systemd 252 (sandbox.py), issue 12 item 2.

``systemctl stop`` of a pool with a health endpoint: it turns 503 for drain_seconds while the pool still serves,
systemd sees the unit deactivating with STOPPING=1 and the drain in its status, then the pool stops gracefully
and the stop succeeds. A health socket that systemd owns (``FileDescriptorName=health``): a load balancer's check
starts the pool, and across a crash of the primary its checks wait in systemd's queue and are answered, never
refused."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import free_port, get_json
from tests.systemd.test_units import NAME, SERVICE, SOCKET, SandboxFactory, activate, install

HEALTH_SOCKET = f"corepool-health@{NAME}.socket"


def health(port: int, timeout: float = 5) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()


def test_systemctl_stop_drains_the_host_first(sandbox_factory: SandboxFactory, corepool_venv: Path) -> None:
    sb = sandbox_factory({})
    pool = install(sb, corepool_venv)
    hport = free_port()
    config = sb.state_dir / "files" / "etc" / f"{NAME}.toml"
    sb.write_file(f"etc/{NAME}.toml", config.read_text() + f'health_bind = "127.0.0.1:{hport}"\ndrain_seconds = 6.0\n')
    sb.systemctl("start", SOCKET)
    activate(pool)
    assert health(hport) == (200, "ok: 2/2 workers ready, generation 1")

    errors: list[BaseException] = []

    def stop() -> None:
        try:
            sb.systemctl("stop", SERVICE, timeout=40)
        except BaseException as exc:
            errors.append(exc)

    stopper = threading.Thread(target=stop)
    stopper.start()
    deadline = time.monotonic() + 20
    answer: tuple[int, str] = (0, "")
    while time.monotonic() < deadline and answer[0] != 503:
        answer = health(hport)
        time.sleep(0.02)
    code, body = answer
    assert code == 503 and body.startswith("draining:") and "then stopping" in body, answer
    # Draining: systemd knows the unit is stopping, and every request is still served.
    served: list[Any] = [get_json(pool.port, timeout=10) for _ in range(5)]
    assert all(x["pid"] for x in served)
    assert sb.show(SERVICE, "ActiveState") == "deactivating"
    assert "draining" in sb.show(SERVICE, "StatusText")
    stopper.join(timeout=60)
    assert not errors, errors
    assert sb.show(SERVICE, "ActiveState") == "inactive"
    assert sb.show(SERVICE, "Result") == "success"
    assert sb.unit_pids(SERVICE) == []
    assert any("SIGTERM: draining the host for 6s" in e.get("MESSAGE", "") for e in sb.journal(SERVICE))


def test_a_health_socket_from_systemd_starts_the_pool_and_outlives_its_primary(
    sandbox_factory: SandboxFactory, corepool_venv: Path
) -> None:
    sb = sandbox_factory({})
    pool = install(sb, corepool_venv, service_dropin=f"Sockets={SOCKET} {HEALTH_SOCKET}\n")
    hport = free_port()
    (sb.unit_dir / "corepool-health@.socket").write_text(
        f"[Socket]\nListenStream=127.0.0.1:{hport}\nFileDescriptorName=health\nService=corepool@%i.service\n"
    )
    sb.daemon_reload()
    sb.systemctl("start", SOCKET, HEALTH_SOCKET)
    assert sb.show(SERVICE, "ActiveState") == "inactive"
    # The balancer's first check is what starts the pool; it is answered, whatever the pool's state by then.
    code, body = health(hport, timeout=20)
    assert (code, body.split(":")[0]) in {(503, "starting"), (200, "ok")}, (code, body)
    status = pool.wait_serving()
    assert [x["name"] for x in status["listeners"]] == ["http"]  # the health socket never reaches a worker
    assert status["health"]["address"] == f"127.0.0.1:{hport}"
    assert health(hport) == (200, "ok: 2/2 workers ready, generation 1")

    main = pool.main_pid()
    answers: list[tuple[int, str]] = []
    refused: list[BaseException] = []
    sb.kill(main, "SIGKILL")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not answers or answers[-1][0] != 200 or pool.main_pid() == main):
        try:
            answers.append(health(hport, timeout=20))  # queued in systemd's socket while no primary accepts
        except OSError as exc:
            refused.append(exc)
        time.sleep(0.05)
    print("health answers across the restart:", answers)
    assert refused == [], refused[:3]
    assert pool.main_pid() != main and pool.nrestarts() == 1
    assert answers[-1] == (200, "ok: 2/2 workers ready, generation 1"), answers[-5:]
    assert {code for code, _ in answers} <= {200, 503}, answers
