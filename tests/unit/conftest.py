"""Fixtures shared by the unit tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def corepool_records(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """corepool's logger does not propagate once log.setup() ran (an earlier test may have): caplog hears it
    directly, once, whatever ran before."""
    logger = logging.getLogger("corepool")
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(caplog.handler)
    yield
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate
