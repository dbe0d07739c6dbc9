"""The alert rules and the routing, checked by Prometheus's and Alertmanager's own tools:
``promtool check rules``, the rule unit tests (``promtool test rules``, firing and not firing),
``amtool check-config`` and ``amtool config routes test`` for every severity."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from reach.settings import REPO_ROOT

RULES = sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO_ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"

needs = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("amtool") is None,
    reason="promtool and amtool are installed by deploy/stack.sh (Debian's prometheus packages)",
)


def run(*args: str | Path) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alerts() -> list[dict[str, object]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


@needs
def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in run("promtool", "check", "rules", *RULES)


@needs
def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    run("promtool", "test", "rules", *RULE_TESTS)


def test_every_alert_has_a_unit_test_a_severity_and_a_runbook_section() -> None:
    tested = {
        case["alertname"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    doc = OPERATIONS.read_text()
    for rule in alerts():
        name = str(rule["alert"])
        assert name in tested, f"{name} has no promtool test"
        assert rule["labels"]["severity"] in {"critical", "warning"}  # type: ignore[index]
        anchor = rule["annotations"]["runbook"].split("#")[1]  # type: ignore[index]
        assert anchor == name.lower()
        assert f"### {name}" in doc, f"docs/operations.md has no runbook for {name}"


@needs
def test_alertmanager_accepts_the_configuration() -> None:
    assert "SUCCESS" in run("amtool", "check-config", ALERTMANAGER)


def routes(*labels: str) -> str:
    return run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels).strip()


@needs
def test_critical_pages_by_phone_and_posts_to_feishu_warnings_only_post() -> None:
    assert routes("severity=critical", "alertname=ReachWorkerDown", "service=reach") == "phone,feishu"
    assert routes("severity=warning", "alertname=ReachConsumerLagHigh", "service=reach") == "feishu"


@needs
def test_every_rule_severity_has_its_route() -> None:
    expected = {"critical": "phone,feishu", "warning": "feishu"}
    label_sets = {tuple(sorted(rule["labels"].items())) for rule in alerts()}  # type: ignore[union-attr]
    for labels in label_sets:
        severity = dict(labels)["severity"]
        assert routes(*(f"{k}={v}" for k, v in labels)) == expected[severity]


def test_the_webhooks_follow_prometheusalerts_url_conventions() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    urls = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert urls["feishu"].endswith("/prometheusalert?type=fs&tpl=prometheus-fs")
    assert "/prometheusalert?type=alydh&tpl=reach-phone" in urls["phone"]
    assert not any("fsurl=" in u or "phone=" in u for u in urls.values()), "secrets stay in PrometheusAlert"
