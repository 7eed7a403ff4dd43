"""``systemctl stop`` of a pool with a health endpoint (issue 12 item 2), under a real systemd 252 (sandbox.py):
the health endpoint turns 503 for drain_seconds while the pool still serves, systemd sees the unit deactivating
with STOPPING=1 and the drain in its status, then the pool stops gracefully and the stop succeeds."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

from tests.support import free_port, get_json
from tests.systemd.test_units import NAME, SERVICE, SOCKET, SandboxFactory, activate, install


def health(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
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
    sb.write_file(f"etc/{NAME}.toml", config.read_text() + f'health_bind = "127.0.0.1:{hport}"\ndrain_seconds = 3.0\n')
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
    assert any("SIGTERM: draining the host for 3s" in e.get("MESSAGE", "") for e in sb.journal(SERVICE))
