"""The shipped alert rules, run by Prometheus's own rule tester on synthetic series
(deploy/prometheus/alerts_test.yml): each alert fires on what the replicas export."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


def promtool_test(directory: Path) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool not found: apt-get install prometheus (make test installs it)"
    return subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_shipped_alerts_pass_their_rule_tests() -> None:
    result = promtool_test(PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_tests_fail_when_the_refusal_alert_cannot_fire(tmp_path: Path) -> None:
    """The rule test itself can fail: the refused-config alert with a threshold no gauge
    reaches is caught."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    text = rules.read_text()
    broken = text.replace("(ray_raysplit_config_refused) > 0", "(ray_raysplit_config_refused) > 1")
    assert broken != text
    rules.write_text(broken)
    result = promtool_test(tmp_path)
    assert result.returncode != 0
    assert "RaysplitConfigRefused" in result.stdout + result.stderr
