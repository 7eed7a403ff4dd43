"""An unknown key in the TOML file: one line naming it and the file, with the setting it was probably meant to be,
and no list of every setting (the README and ``corepool serve --help`` have that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corepool import settings


@pytest.mark.parametrize(("key", "hint"), [("wrokers", " (did you mean 'workers'?)"),
                                           ("health_bnd", " (did you mean 'health_bind'?)"),
                                           ("colour", "")])
def test_unknown_key_suggests_the_closest_setting(tmp_path: Path, key: str, hint: str) -> None:
    config = tmp_path / "pool.toml"
    config.write_text(f"{key} = 1\n")
    with pytest.raises(settings.SettingsError) as info:
        settings.load(str(config))
    assert str(info.value) == f"unknown setting '{key}' in {config}{hint}"


def test_an_unknown_flag_key_gets_the_same_hint() -> None:
    with pytest.raises(settings.SettingsError, match=r"^unknown setting 'wrokers' \(did you mean 'workers'\?\)$"):
        settings.load(None, {"wrokers": 2})
