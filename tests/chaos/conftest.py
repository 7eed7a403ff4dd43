"""Fixtures of the chaos suite: real pools (``tests.integration.conftest.Pool``) of the chaos test apps.

``mode`` is preload (the default) unless a test parametrizes it; ``pool_factory(app, *flags, workers=2,
env=...)`` makes a pool in ``mode`` that is stopped at teardown whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Pool

# Fast health pings so that a wedged worker is found in about a second.
FAST_HEALTH = ("--health-interval", "0.3", "--health-timeout", "1")


@pytest.fixture
def mode() -> str:
    """Cases run in preload mode (the default) unless they parametrize ``mode``."""
    return "preload"


@pytest.fixture
def pool_factory(tmp_path: Path, mode: str) -> Iterator[Any]:
    pools: list[Pool] = []

    def make(app: str, *flags: str, **kw: Any) -> Pool:
        pool = Pool(tmp_path / f"pool{len(pools)}", app, "--mode", mode, *flags, **kw)
        pool.tmp.mkdir()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
