"""The alert rules: valid for promtool, covered by its tests, on known metrics."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.promql import ROOT, metric_names, served_names

RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULES_TEST = RULES_DIR / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package "
    "(.ci/run does that as root)",
)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def run_promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *arguments],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_promtool
def test_promtool_checks_rules() -> None:
    result = run_promtool("check", "rules", RULES.name)

    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_tests_pass() -> None:
    result = run_promtool("test", "rules", RULES_TEST.name)

    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_use_catalogue_metrics() -> None:
    allowed = served_names()

    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule['alert']} selects no metric"
        assert used <= allowed, f"{rule['alert']} uses {sorted(used - allowed)}"


def test_each_alert_fires_and_stays_quiet_in_tests() -> None:
    document = yaml.safe_load(RULES_TEST.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])

    alerts = {rule["alert"] for rule in rules()}
    assert firing == alerts
    assert quiet == alerts


def test_rules_have_severity_and_text() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
