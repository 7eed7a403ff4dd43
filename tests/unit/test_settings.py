from __future__ import annotations

from pathlib import Path

import pytest

from corepool import settings


def test_defaults_file_and_flags_merge_in_that_order(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('app = "a:app"\nworkers = 3\nbind = ["127.0.0.1:9000", "unix:/run/a.sock"]\nhealth_timeout = 2\n')
    s = settings.load(str(config), {"workers": "5", "access_log": True})
    assert (s.app, s.workers, s.health_timeout, s.access_log) == ("a:app", 5, 2.0, True)
    assert s.bind == ("127.0.0.1:9000", "unix:/run/a.sock")
    assert s.graceful_timeout == 30.0 and s.config_path == str(config)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"workers": "0"}, "workers: must be at least 1"),
        ({"workers": "2.5"}, "workers: expected a whole number"),
        ({"interface": "soap"}, "interface: 'soap' is not one of"),
        ({"health_interval": "-1"}, "health_interval: must be at least"),
        ({"app": "nocolon"}, "app: 'nocolon' is not module:attribute"),
        ({"log_level": "loud"}, "log_level: 'loud' is not one of"),
    ],
)
def test_bad_values_name_the_setting_and_the_flag(flags: dict[str, str], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message) as err:
        settings.load(None, flags)
    assert "--" in str(err.value) or "module:attribute" in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text("workers = true\n")
    with pytest.raises(settings.SettingsError, match=f"fix 'workers' in {config}"):
        settings.load(str(config))
    config.write_text("colour = 1\n")
    with pytest.raises(settings.SettingsError, match="unknown setting 'colour'"):
        settings.load(str(config))


def test_control_path_follows_runtime_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/corepool/x")
    assert settings.Settings(name="x").control_path() == "/run/corepool/x/control.sock"
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert settings.Settings(name="x").control_path() == "/run/user/1000/corepool/x/control.sock"
    assert settings.Settings(control="/tmp/c.sock").control_path() == "/tmp/c.sock"


def test_every_setting_is_declared_once_and_documented() -> None:
    import dataclasses
    from pathlib import Path as P

    declared = {f.name for f in settings.FIELDS}
    stored = {f.name for f in dataclasses.fields(settings.Settings)} - {"config_path"}
    assert declared == stored
    readme = (P(__file__).parents[2] / "README.md").read_text()
    missing = [name for name in declared if f"| `{name}` |" not in readme]
    assert not missing, f"README's settings table lacks {missing}"
