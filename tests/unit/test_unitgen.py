from __future__ import annotations

import pytest

from corepool import unitgen


def test_renders_a_socket_and_service_for_an_app() -> None:
    req = unitgen.UnitRequest(app="shop.web:app", name="shop", listen=("127.0.0.1:9000", "[::1]:9000"),
                              app_dir="/srv/shop", user="shop", executable=("/opt/corepool/bin/corepool",))
    files = unitgen.render(req)
    assert set(files) == {"shop.socket", "shop.service"}
    sock, service = files["shop.socket"], files["shop.service"]
    assert "ListenStream=127.0.0.1:9000\nListenStream=[::1]:9000\n" in sock
    assert sum(line.startswith("ListenStream=") for line in sock.splitlines()) == 2 and "%i" not in sock
    assert "ExecStart=/opt/corepool/bin/corepool serve shop.web:app --name shop" in service
    assert "--app-dir /srv/shop" in service
    assert "ExecReload=/opt/corepool/bin/corepool reload --wait --control /run/corepool/shop/control.sock" in service
    assert "Requires=shop.socket" in service
    assert not any("corepool@" in line for line in service.splitlines() if not line.startswith("#"))
    settings = [line for line in service.splitlines() if not line.startswith("#")]
    assert "User=shop" in settings and not any(line.startswith("DynamicUser=") for line in settings)
    assert not any("PathExists=" in line for line in settings) and "%i" not in service


def test_bad_name_is_refused() -> None:
    with pytest.raises(unitgen.UnitError, match="--name"):
        unitgen.render(unitgen.UnitRequest(app="a:app", name="bad name"))


def test_warns_about_apps_under_home() -> None:
    req = unitgen.UnitRequest(app="a:app", name="a", app_dir="/home/me/app")
    assert any("ProtectHome" in w for w in unitgen.warnings_for(req))


def test_the_service_fails_a_rolled_back_reload_on_every_systemd() -> None:
    """Type=notify + ExecReload=corepool reload --wait: the one form whose reload job fails on a roll back (252 and
    257 alike, tests/systemd and packaging/scenario.py); Type=notify-reload cannot fail one."""
    req = unitgen.UnitRequest(app="shop.web:app", name="shop", executable=("/opt/corepool/bin/corepool",))
    settings = [line for line in unitgen.render(req)["shop.service"].splitlines() if not line.startswith("#")]
    assert "Type=notify" in settings and "NotifyAccess=main" in settings
    assert [line for line in settings if line.startswith("ExecReload=")] == [
        "ExecReload=/opt/corepool/bin/corepool reload --wait --control /run/corepool/shop/control.sock"]
    assert not any(line.startswith(("Type=notify-reload", "ReloadSignal=")) for line in settings)


def test_units_command_prints_the_pair(capsys: pytest.CaptureFixture[str]) -> None:
    from corepool import cli

    assert cli.main(["units", "--app", "a:app", "--name", "x"]) == 0
    out = capsys.readouterr().out
    assert "# ---- x.socket\n" in out and "# ---- x.service\n" in out
    assert "\nType=notify\n" in out and "\nExecReload=" in out
