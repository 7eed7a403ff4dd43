from __future__ import annotations

from pathlib import Path

import pytest

from corepool import unitgen


def test_renders_a_socket_and_service_for_an_app() -> None:
    req = unitgen.UnitRequest(app="shop.web:app", name="shop", listen=("127.0.0.1:9000", "[::1]:9000"),
                              app_dir="/srv/shop", user="shop", executable=("/opt/corepool/bin/corepool",),
                              systemd_version=252)
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


def test_systemd_253_and_later_get_notify_reload_without_exec_reload() -> None:
    req = unitgen.UnitRequest(app="shop.web:app", name="shop", executable=("/opt/corepool/bin/corepool",),
                              systemd_version=257)
    settings = [line for line in unitgen.render(req)["shop.service"].splitlines() if not line.startswith("#")]
    assert "Type=notify-reload" in settings and "ReloadSignal=SIGUSR2" in settings
    assert "Type=notify" not in settings and not any(line.startswith("ExecReload=") for line in settings)
    assert "NotifyAccess=main" in settings  # everything else is the 252 unit's


def test_for_systemd_keeps_252_units_and_is_idempotent() -> None:
    text = (unitgen.template_dir() / "corepool@.service").read_text()
    assert unitgen.for_systemd(text, 252) == text and unitgen.for_systemd(text, None) == text
    native = unitgen.for_systemd(text, 253)
    assert native != text and unitgen.for_systemd(native, 257) == native


def test_write_units_adapts_only_the_service(tmp_path: Path) -> None:
    written = unitgen.write_units(unitgen.template_dir(), tmp_path, 257)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"corepool@.service", "corepool@.socket", "corepool@demo.socket.d/listen.conf"} <= names
    assert (tmp_path / "corepool@.socket").read_text() == (unitgen.template_dir() / "corepool@.socket").read_text()
    assert "Type=notify-reload" in (tmp_path / "corepool@.service").read_text()


def test_units_command_renders_for_the_systemd_it_is_told(capsys: pytest.CaptureFixture[str]) -> None:
    from corepool import cli

    assert cli.main(["units", "--app", "a:app", "--name", "x", "--systemd-version", "257"]) == 0
    newer = capsys.readouterr().out
    assert "Type=notify-reload" in newer and "ExecReload=" not in newer.replace("No ExecReload=", "")
    assert cli.main(["units", "--app", "a:app", "--name", "x", "--systemd-version", "252"]) == 0
    older = capsys.readouterr().out
    assert "Type=notify\n" in older and "ExecReload=" in older
