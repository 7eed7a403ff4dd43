"""listeners.acquire binds the primary's own endpoints (health_bind, metrics_bind) beside the app's sockets, so they
go into systemd's fd store with them (tests/systemd/test_health_fdstore.py has the restart under systemd)."""

from __future__ import annotations

import pytest

from corepool import listeners


def test_endpoints_are_bound_beside_the_app_sockets() -> None:
    got = listeners.acquire(("127.0.0.1:0",), 16, {}, (("health", "127.0.0.1:0", 64), ("metrics", "127.0.0.1:0", 16)))
    try:
        assert [(lst.name, lst.source) for lst in got.listeners] == [("http", "bind"), ("health", "bind"),
                                                                      ("metrics", "bind")]
        assert got.store_changed  # all fresh: the fd store must hear of them
    finally:
        for lst in got.listeners:
            lst.close()


def test_a_socket_of_the_endpoints_name_wins() -> None:
    got = listeners.acquire(("health=127.0.0.1:0",), 16, {}, (("health", "127.0.0.1:1", 64),))
    try:
        assert [lst.name for lst in got.listeners] == ["health"]
    finally:
        for lst in got.listeners:
            lst.close()


def test_an_endpoint_that_cannot_be_bound_is_named_by_its_setting() -> None:
    with pytest.raises(listeners.ListenerError, match=r"^health_bind: bind 'nonsense'"):
        listeners.acquire(("127.0.0.1:0",), 16, {}, (("health", "nonsense", 64),))
