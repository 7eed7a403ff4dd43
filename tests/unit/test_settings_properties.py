"""The settings parser, by property, for every declared setting (so a new setting is covered as it is added):
a value of the wrong type or out of range raises SettingsError naming the setting; any valid value round-trips,
given as a flag or in TOML."""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corepool import health, metrics
from corepool import settings as cps
from corepool.settings import FIELDS, Field

app_specs = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,10}:[A-Za-z_][A-Za-z0-9_.]{0,10}", fullmatch=True)
socket_names = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=10)
# an app's route never names the pool's own endpoints (settings refuses it: "... never an app's")
app_socket_names = socket_names.filter(lambda n: n not in (health.NAME, metrics.NAME))
ports = st.integers(0, 65535)
binds = st.one_of(
    ports.map(lambda p: f"127.0.0.1:{p}"),
    ports.map(lambda p: f"[::1]:{p}"),
    ports.map(lambda p: f":{p}"),
    st.text(string.ascii_letters + "/._-", min_size=1, max_size=20).map(lambda p: f"unix:/{p}"),
).flatmap(lambda b: st.one_of(st.just(b), socket_names.map(lambda n: f"{n}={b}")))
# Text settings whose values are checked further by corepool take valid examples; others any text.
SPECIAL_TEXT: dict[str, st.SearchStrategy[str]] = {
    "forwarded_allow_ips": st.sampled_from(["*", "127.0.0.1", "127.0.0.1,::1", "10.0.0.0/8,192.168.1.1"]),
    "root_path": st.sampled_from(["", "/api", "/a/b"]),
}


def valid(f: Field) -> st.SearchStrategy[tuple[Any, Any]]:
    """(value as given, value expected in Settings)."""
    if f.kind is dict:
        return st.dictionaries(app_socket_names, app_specs, min_size=1, max_size=3).map(
            lambda d: (d, tuple(sorted(d.items())))
        )
    if f.repeat:
        return st.lists(binds, min_size=1, max_size=3).map(lambda items: (items, tuple(items)))
    if f.kind is bool:
        return st.booleans().map(lambda b: (b, b))
    if f.kind is int:
        low = int(f.minimum) if f.minimum is not None else -(2**31)
        return st.integers(low, 2**31).map(lambda i: (i, i))
    if f.kind is float:
        low_f = f.minimum if f.minimum is not None else -1e9
        return st.floats(low_f, 1e9, allow_nan=False, allow_infinity=False).map(lambda x: (x, x))
    if f.choices:
        return st.sampled_from(f.choices).map(lambda c: (c, c))
    if f.name == "app" or f.name in cps.HOOKS:
        return app_specs.map(lambda a: (a, a))
    return SPECIAL_TEXT.get(f.name, st.text(max_size=30)).map(lambda t: (t, t))


def wrong_type(f: Field) -> st.SearchStrategy[Any]:
    containers = st.lists(st.integers(), min_size=1, max_size=3) | st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                    min_size=1, max_size=3)
    if f.kind is dict:
        return st.integers() | st.floats() | st.booleans() | st.lists(st.integers(), min_size=1, max_size=3)
    if f.repeat:
        return st.integers() | st.floats() | st.booleans() | st.dictionaries(st.text(max_size=3), st.integers(),
                                                                               max_size=3) | st.just([])
    if f.kind is bool:
        words = {"true", "yes", "1", "on", "false", "no", "0", "off"}
        return st.integers() | st.floats() | containers | st.text(max_size=8).filter(lambda t: t.lower() not in words)
    if f.kind is int:
        return (st.floats() | st.booleans() | containers
                | st.text(string.ascii_letters + ".,;- ", min_size=1, max_size=8).filter(_not_int))
    if f.kind is float:
        return st.booleans() | containers | st.text(string.ascii_letters + ",;- ", min_size=1, max_size=8).filter(
            _not_float)
    return st.integers() | st.floats() | st.booleans() | containers


def _not_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return True
    return False


def _not_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = "".join(
            "\\\\" if c == "\\" else '\\"' if c == '"' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F
            else c for c in value
        )
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def _as_flag(f: Field, value: Any) -> Any:
    """What argparse hands to settings.load for this value."""
    if f.kind is dict:
        return [f"{k}={v}" for k, v in value.items()]
    if f.repeat or f.kind is bool:
        return value
    return str(value) if not isinstance(value, str) else value


NAMES = [f.name for f in FIELDS]
# An explicit list replaces the profile's (tests/conftest.py), so too_slow is named again.
FAST = settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.data())
def test_any_valid_value_round_trips_as_flag_and_in_toml(name: str, data: st.DataObject, tmp_path: Path) -> None:
    f = cps.FIELD_BY_NAME[name]
    given_value, expected = data.draw(valid(f))
    assert cps.load(None, {name: _as_flag(f, given_value)}).value(name) == expected
    config = tmp_path / "pool.toml"
    config.write_text(f"{name} = {_toml_value(given_value)}\n", encoding="utf-8")
    assert cps.load(str(config)).value(name) == expected


@pytest.mark.parametrize("name", NAMES)
@FAST
@given(data=st.data())
def test_any_value_of_the_wrong_type_names_the_setting(name: str, data: st.DataObject) -> None:
    f = cps.FIELD_BY_NAME[name]
    value = data.draw(wrong_type(f))
    with pytest.raises(cps.SettingsError) as err:
        cps.load(None, {name: value})
    assert str(err.value).startswith(f"{name}:") or str(err.value).startswith(f"{name} "), str(err.value)


@pytest.mark.parametrize("name", [f.name for f in FIELDS if f.minimum is not None])
@FAST
@given(data=st.data())
def test_any_value_below_the_minimum_names_the_setting(name: str, data: st.DataObject) -> None:
    f = cps.FIELD_BY_NAME[name]
    assert f.minimum is not None
    value: Any
    if f.kind is int:
        value = data.draw(st.integers(max_value=math.ceil(f.minimum) - 1))
    else:
        value = data.draw(st.floats(max_value=f.minimum, exclude_max=True, allow_nan=False, allow_infinity=False))
    for given_value in (value, str(value)):
        with pytest.raises(cps.SettingsError, match=f"^{name}: must be at least"):
            cps.load(None, {name: given_value})


@pytest.mark.parametrize("text", ["nan", "inf", "-nan"])
def test_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(cps.SettingsError, match=r"^health_timeout:"):
        cps.load(None, {"health_timeout": text})
