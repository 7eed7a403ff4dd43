"""Fixtures of the chaos suite: real pools (``tests.integration.conftest.Pool``) of the chaos test apps.

``mode`` is preload (the default) unless a test parametrizes it; ``pool_factory(app, *flags, workers=2,
env=...)`` makes a pool in ``mode`` that is stopped at teardown whatever happened.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import (
    WSGI_ENGINES,
    engine_param,
    pool_factory,  # noqa: F401 (the same fixture, with this suite's mode)
)

# Fast health pings so that a wedged worker is found in about a second.
FAST_HEALTH = ("--health-interval", "0.3", "--health-timeout", "1")


@pytest.fixture
def mode() -> str:
    """Cases run in preload mode (the default) unless they parametrize ``mode``."""
    return "preload"


@pytest.fixture(params=WSGI_ENGINES)
def wsgi_engine(request: pytest.FixtureRequest) -> str:
    """A case that asks for it runs on both WSGI engines (its ASGI variants once: tests/conftest.py)."""
    return engine_param(request)
