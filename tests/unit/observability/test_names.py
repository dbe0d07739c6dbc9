"""Every metric a dashboard or an alert rule uses is declared in reach/metric_defs.py and
exported by a reach process; the committed dashboard JSON is what the code generates; the
operations guide lists every metric."""

from __future__ import annotations

import re

import yaml

from deploy.grafana.dashboards import BOARDS, rendered
from reach.metric_defs import METRICS, exported_names
from reach.settings import REPO_ROOT

RULES = sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
STANDARD = {"up", "process_cpu_seconds_total", "process_resident_memory_bytes"}
IDENTIFIER = re.compile(r"\b([a-z_][a-z0-9_:]*)\b(?!\s*\()")
PROMQL_WORDS = {"by", "le", "and", "or", "unless", "on", "offset", "without", "bool", "inf"}


def rules() -> list[dict[str, str]]:
    return [r for path in RULES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """Names in a PromQL expression that are metrics (not functions, labels or keywords)."""
    without_strings = re.sub(r'"[^"]*"', "", expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_matchers)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    return {n for n in IDENTIFIER.findall(without_ranges) if n not in PROMQL_WORDS and not n.isdigit()}


def test_the_extractor_sees_metrics_only() -> None:
    expr = 'histogram_quantile(0.95, sum by (le) (rate(reach_api_request_seconds_bucket{route!~"/x"}[5m])))'
    assert metric_names(expr) == {"reach_api_request_seconds_bucket"}
    assert metric_names("a:b:c offset 10m and on() x_total") == {"a:b:c", "x_total"}


def test_every_metric_in_dashboards_and_rules_is_declared_and_exported() -> None:
    recorded = {r["record"] for r in rules() if "record" in r}
    used = {name for board in BOARDS for p in board.panels for q, _ in p.queries for name in metric_names(q)}
    used |= {name for r in rules() for name in metric_names(r["expr"])}
    unknown = used - exported_names() - recorded - STANDARD
    assert not unknown, f"not declared in reach/metric_defs.py: {sorted(unknown)}"
    assert {"reach_consumer_lag", "reach_messages_sent_total", "reach_provider_circuit_state"} <= used


def test_the_dashboard_json_is_what_the_code_generates() -> None:
    for board in BOARDS:
        assert board.path.read_text() == rendered(board), (
            f"run python -m deploy.grafana.dashboards ({board.uid})"
        )


def test_the_operations_guide_lists_every_metric() -> None:
    doc = (REPO_ROOT / "docs" / "operations.md").read_text()
    missing = [m.name for m in METRICS if f"| `{m.name}` |" not in doc]
    assert not missing
