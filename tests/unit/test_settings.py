from __future__ import annotations

from pathlib import Path

import pytest

from corepool import settings


def test_defaults_file_and_flags_merge_in_that_order(tmp_path: Path) -> None:
    config = tmp_path / "pool.toml"
    config.write_text('app = "a:app"\nworkers = 3\nbind = ["127.0.0.1:9000", "unix:/run/a.sock"]\nhealth_timeout = 2\n')
    s = settings.load(str(config), {"workers": "5", "access_log": True})
    assert (s.app, s.workers, s.health_timeout, s.http.access_log) == ("a:app", 5, 2.0, True)
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
    stored = {f.name for f in dataclasses.fields(settings.Settings)} - {"config_path", "http"}
    engine = {f.name for f in dataclasses.fields(settings.HttpOptions)} - set(settings.POOL_SETTINGS)
    assert len(settings.FIELDS) == len(declared) and declared == stored | engine and not stored & engine
    assert {f.name for f in settings.FIELDS if f.engine} == engine
    shown = settings.Settings(request_timeout=7.0, health_timeout=2.0).http
    assert (shown.request_timeout, shown.health_timeout) == (7.0, 2.0), "the pool's settings an engine is shown"
    assert settings.HttpOptions().request_timeout == settings.Settings().request_timeout
    s = settings.Settings()
    assert all(s.value(f.name) == getattr(s.http if f.engine else s, f.name) for f in settings.FIELDS)
    readme = (P(__file__).parents[2] / "README.md").read_text()
    missing = [name for name in declared if f"| `{name}` |" not in readme]
    assert not missing, f"README's settings table lacks {missing}"


# ---- every setting, wrong in a flag or in TOML, refused by serve and check alike (generated from FIELDS) ----


def _bad_cases() -> list[tuple[str, str, str | None, str | None]]:
    """(setting, text to find in the error, bad flag value or None, bad TOML value or None) for every setting."""
    cases: list[tuple[str, str, str | None, str | None]] = []
    for f in settings.FIELDS:
        if f.kind is dict:
            cases.append((f.name, f.name, "metrics", "5"))
        elif f.repeat:
            cases += [(f.name, f.name, "nonsense", "5"), (f.name, f.name, "127.0.0.1:99999", '["127.0.0.1:99999"]')]
        elif f.kind is bool:
            cases.append((f.name, f.flag, "maybe", '"maybe"'))
        elif f.kind in (int, float):
            cases.append((f.name, f.name, "many", '"many"'))
            if f.minimum is not None:
                low = f"{f.minimum - 1:g}"
                cases.append((f.name, f.name, low, low))
        elif f.choices:
            cases.append((f.name, f.name, "bogus", '"bogus"'))
        elif f.name == "app" or f.name in settings.HOOKS:
            cases.append((f.name, f.name, "nocolon", "5"))
        else:
            cases.append((f.name, f.name, None, "5"))  # any text is a valid flag value; a number in TOML is not
    return cases


BAD = _bad_cases()


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize(("name", "named", "flag_value", "toml_value"), BAD, ids=[f"{c[0]}-{c[2]}" for c in BAD])
def test_every_bad_setting_is_refused_by_serve_and_check(
    command: str, name: str, named: str, flag_value: str | None, toml_value: str | None,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from corepool import apps, cli, listeners

    def must_not_get_here(*_a: object, **_k: object) -> None:
        raise AssertionError("a bad setting got past validation")

    monkeypatch.setattr(listeners, "acquire", must_not_get_here)
    monkeypatch.setattr(apps, "load", must_not_get_here)
    f = settings.FIELD_BY_NAME[name]
    runs: list[list[str]] = []
    if flag_value is not None:
        flag = [f"{f.flag}={flag_value}"] if f.kind is bool else [f.flag, flag_value]
        runs.append([command, *([] if name == "app" else ["corepool.demo:app"]),
                     *(flag if name != "app" else [flag_value])])
    if toml_value is not None:
        config = tmp_path / "pool.toml"
        app_line = "" if name == "app" else 'app = "corepool.demo:app"\n'
        config.write_text(f"{app_line}{name} = {toml_value}\n")
        runs.append([command, "--config", str(config)])
    assert runs
    for argv in runs:
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code  # type: ignore[assignment]
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, err)
        assert len(lines) == 1 and named in lines[0], (argv, err)


@pytest.mark.parametrize("name", ["metrics", "health"])
def test_a_route_cannot_take_the_primarys_own_socket_names(name: str) -> None:
    with pytest.raises(settings.SettingsError, match=f"routes: a socket named {name} is the pool's own"):
        settings.load(None, {"routes": [f"{name}=a:app"]})
