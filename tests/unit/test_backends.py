"""Broadcast backends: the setting's check, the Redis wire format, backoff (no Redis needed here)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from corepool import backends
from corepool.settings import SettingsError


@pytest.mark.parametrize("url", ["local", "redis://127.0.0.1:6379/0", "redis://:secret@redis.example:6380/2",
                                 "rediss://cache.internal/0", "unix:///run/redis/redis.sock?db=1"])
def test_good_broadcast_settings(url: str) -> None:
    backends.check(url)


@pytest.mark.parametrize("url", ["", "Local", "redis", "http://127.0.0.1:6379", "redis://", "redis://h:99999/0",
                                 "127.0.0.1:6379"])
def test_bad_broadcast_settings_are_refused_with_an_example(url: str) -> None:
    with pytest.raises(SettingsError, match=r"redis://127\.0\.0\.1:6379/0|[Pp]ort"):
        backends.check(url)


def test_passwords_never_reach_status_or_logs() -> None:
    assert backends.redact("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert backends.redact("redis://user:hunter2@h/0") == "redis://user:***@h/0"
    assert backends.redact("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize("url", ["local", "redis://127.0.0.1:6379/0"])
def test_the_primary_never_imports_redis(url: str) -> None:
    """The single-host default needs no redis-py; with redis://, only the bridge process imports it."""
    pytest.importorskip("redis")
    code = (f"import sys; from corepool import backends, primary; b = backends.make({url!r}, 'c', 65536); "
            "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if 'redis' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wire_format_round_trip_and_garbage() -> None:
    pytest.importorskip("redis")
    from corepool.backends import redis as br

    raw = br.encode("abc", 7, "cache.invalidate", {"key": "user:42"})
    assert br.decode(raw, 1000) == ("abc", 7, "cache.invalidate", {"key": "user:42"})
    assert br.decode(raw, len(raw) - 1) is None  # over the limit: not even parsed
    for garbage in (b"", b"\xff", b"[]", b'{"o": 1, "s": 1, "t": "x"}', b'{"o": "a", "s": "1", "t": "x"}',
                    b'{"o": "a", "s": 1}', b"[" * 5000):
        assert br.decode(garbage, 100000) is None


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    pytest.importorskip("redis")
    from corepool.backends import redis as br

    rng = random.Random(1)
    delays = [br.backoff(n, rng) for n in range(1, 12)]
    assert 0.08 <= delays[0] <= 0.12
    assert all(d <= br.BACKOFF_MAX * 1.2 for d in delays)
    assert delays[-1] >= br.BACKOFF_MAX * 0.8
