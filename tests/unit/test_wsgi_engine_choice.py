"""Which engine serves WSGI (engines.wsgi_engine): the setting, whether the pinned granian is usable, and the
settings only the bridge serves (TLS, HTTP/2)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from corepool import engines
from corepool.engines import granian_wsgi
from corepool.settings import HttpOptions, SettingsError

CLEARTEXT_H1 = HttpOptions(http2=False)


def options(**changes: object) -> HttpOptions:
    return dataclasses.replace(CLEARTEXT_H1, **changes)


@pytest.fixture
def granian_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(granian_wsgi, "unusable", lambda: None)


@pytest.fixture
def granian_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(granian_wsgi, "unusable", lambda: "granian is not installed (granian)")


def test_bridge_is_always_the_bridge() -> None:
    assert engines.wsgi_engine(options(wsgi_engine="bridge")) == ("bridge", "wsgi_engine is bridge")


@pytest.mark.usefixtures("granian_usable")
@pytest.mark.parametrize("setting", ["auto", "granian"])
def test_granian_serves_cleartext_http1_when_usable(setting: str) -> None:
    engine, why = engines.wsgi_engine(options(wsgi_engine=setting))
    assert engine == "granian" and granian_wsgi.PINNED in why


@pytest.mark.usefixtures("granian_usable")
@pytest.mark.parametrize(("changes", "reason"), [({"ssl_certfile": "cert.pem"}, "ssl_certfile is set (TLS)")])
def test_tls_is_the_bridge_on_auto_and_a_start_error_on_granian(changes: dict[str, object], reason: str) -> None:
    engine, why = engines.wsgi_engine(options(wsgi_engine="auto", **changes))
    assert engine == "bridge" and why.startswith(reason) and "only the bridge serves" in why
    with pytest.raises(SettingsError, match="^" + re.escape(f"wsgi_engine: granian cannot serve: {reason}")):
        engines.wsgi_engine(options(wsgi_engine="granian", **changes))


@pytest.mark.usefixtures("granian_missing")
def test_granian_missing_is_the_bridge_on_auto_and_a_start_error_on_granian() -> None:
    assert engines.wsgi_engine(options(wsgi_engine="auto")) == ("bridge", "granian is not installed (granian)")
    wanted = ("wsgi_engine: granian cannot serve: granian is not installed (granian) "
              "(or set wsgi_engine to auto or bridge)")
    with pytest.raises(SettingsError, match=re.escape(wanted)):
        engines.wsgi_engine(options(wsgi_engine="granian"))


@pytest.mark.usefixtures("granian_usable")
def test_the_default_settings_run_wsgi_on_granian_without_h2c() -> None:
    """http2 is on by default; granian serves its sockets in HTTP/1.1 and the start line says so."""
    engine, why = engines.wsgi_engine(HttpOptions())
    assert engine == "granian" and "HTTP/2 (h2c) is not offered on the sockets it serves" in why
