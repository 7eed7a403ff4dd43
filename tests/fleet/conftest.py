"""The fleet tests' fixture: two hosts (pools) behind one HAProxy, both UP, stopped at teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.harness import HAProxy, Host


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[Host], HAProxy]]:
    hosts = [Host(tmp_path, "a"), Host(tmp_path, "b")]
    proxy: HAProxy | None = None
    try:
        for h in hosts:
            h.pool.start(wait=False)
        for h in hosts:
            h.pool.wait_running()
        proxy = HAProxy(tmp_path, hosts)
        for h in hosts:
            proxy.wait(h.name, "UP")
        yield hosts, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for h in hosts:
            h.pool.close()
