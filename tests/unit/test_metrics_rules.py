"""docs/operations.md's alert rules: valid for promtool, and about metrics corepool actually exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from corepool import metrics
from corepool.metrics import Broadcasts, Counters
from tests.unit.test_policy import Harness

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def alert_rules() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    (rules,) = [b for b in blocks if b.startswith("groups:")]
    return rules


def exported_names() -> set[str]:
    h = Harness()
    h.start()
    h.ready_all()
    text = metrics.render(h.policy, Counters(), Broadcasts(), lambda _pid: 1).decode()
    return set(re.findall(r"^(corepool_\w+?)(?:\{| )", text, re.M))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) not installed")
def test_promtool_accepts_the_documented_alert_rules(tmp_path: Path) -> None:
    path = tmp_path / "corepool.rules.yml"
    path.write_text(alert_rules())
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 9 rules found" in check.stdout


def test_every_metric_the_rules_use_is_exported() -> None:
    used = set(re.findall(r"\bcorepool_\w+", alert_rules()))
    assert used, "the rules use corepool's metrics"
    exported = exported_names()
    assert used <= exported, used - exported
