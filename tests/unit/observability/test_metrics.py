"""The metrics themselves: series from the start, bounded labels, the standard collectors,
ingestion-based latency, unmatched events and refused reloads counted, and promtool's lint."""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.plan import end_to_end_seconds, event_age_seconds
from agents.trigger import TriggerPlanner, ingested_ms
from channels.config import parse_channels
from models.events import parse_event
from models.messages import ReachMessage
from reach.metric_defs import METRICS, exported_names
from reach.metrics import ApiMetrics, WorkerMetrics, platform_label
from reach.runtime import Setup
from reach.settings import Settings
from tests.unit.agents.test_trigger import CHANNELS, RULES  # one rule, one inbox channel


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def runtime(tmp_path: Path) -> Setup:
    (tmp_path / "rules.yaml").write_text(RULES)
    return Setup.load(Settings(rules_dir=tmp_path), parse_channels(CHANNELS, {}))


def test_failure_counters_have_series_before_the_first_failure(tmp_path: Path) -> None:
    found = samples(runtime(tmp_path).registry)
    key = (
        "reach_messages_failed_total",
        (
            ("channel", "inbox"),
            ("outcome", "permanent"),
            ("platform", "ios"),
            ("provider", "mariadb"),
        ),
    )
    assert found[key] == 0
    assert (
        found[
            (
                "reach_messages_sent_total",
                (("channel", "inbox"), ("platform", "android"), ("provider", "mariadb")),
            )
        ]
        == 0
    )
    assert found[("reach_rules_reloads_total", (("result", "refused"),))] == 0


def test_every_process_exports_build_info_and_process_metrics(tmp_path: Path) -> None:
    for registry in (runtime(tmp_path).registry, api_registry()):
        names = {name for name, _ in samples(registry)}
        assert {"reach_build_info", "process_resident_memory_bytes", "python_info"} <= names
        assert "process_cpu_seconds_total" in names


def api_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ApiMetrics(registry)
    return registry


def test_declared_names_are_what_the_worker_and_api_export(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    rt.metrics.event_age.observe(1)
    for name in ("reach_end_to_end_seconds", "reach_send_batch_seconds"):
        assert name in {m.name for m in METRICS}
    exported = {name for name, _ in samples(rt.registry)} | {name for name, _ in samples(api_registry())}
    worker_and_api = {s for m in METRICS if m.process != "exporter" and not m.labels for s in m.exported()}
    assert worker_and_api <= exported
    assert "reach_consumer_lag" in exported_names()


def test_platform_labels_are_bounded() -> None:
    assert [platform_label(p) for p in ("ios", "android", "web", "", "Nokia 3310 ' OR 1")] == [
        "ios",
        "android",
        "web",
        "",
        "other",
    ]


def message(**fields: object) -> ReachMessage:
    base = dict(
        message_id="m", user_id="u", rule_id="r", template="t", channel="inbox", provider="p",
        priority=0, event_id="e", event_name="n", event_ts=1_000, created_ts=50_000,
        variables={}, contact={},
    )  # fmt: skip
    return ReachMessage(**{**base, **fields})  # type: ignore[arg-type]


def test_end_to_end_starts_at_ingestion_not_at_the_clients_ts() -> None:
    eight_hours_old = message(event_ts=0, ingested_ts=8 * 3600 * 1000, created_ts=8 * 3600 * 1000 + 5)
    assert end_to_end_seconds(eight_hours_old, 8 * 3600 * 1000 + 250) == 0.25
    assert end_to_end_seconds(message(ingested_ts=0, created_ts=50_000), 51_500) == 1.5  # older records
    assert end_to_end_seconds(message(ingested_ts=60_000), 59_000) == 0


def test_event_age_is_ingestion_minus_the_events_ts() -> None:
    event = parse_event(
        orjson.dumps({"event_id": "e", "user_id": "u", "name": "n", "ts": 1_790_000_000_000}), 8
    )
    assert event_age_seconds(event, 1_790_000_000_000 + 28_900_000) == 28_900
    assert event_age_seconds(event, 1_789_999_999_000) == 0  # a client clock ahead of ours


def test_ingestion_time_is_the_records_time_or_now() -> None:
    assert ingested_ms(types.SimpleNamespace(timestamp=1_790_000_000.25), 5) == 1_790_000_000_250
    assert ingested_ms(types.SimpleNamespace(timestamp=None), 5) == 5


def event_record(name: str, offset: int) -> types.SimpleNamespace:
    value = orjson.dumps({"event_id": f"e-{offset}", "user_id": "u-1", "name": name, "ts": 1_790_000_000_000})
    message = types.SimpleNamespace(
        value=value, key=b"u-1", topic="reach.events", partition=0, offset=offset, timestamp=1_790_000_060.0
    )
    return types.SimpleNamespace(message=message)


def test_events_matching_no_rule_are_counted_and_their_age_observed(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    batch = TriggerPlanner(rt, {}).plan(
        [event_record("hello", 1), event_record("other", 2), event_record("x", 3)]
    )
    found = samples(rt.registry)
    assert len(batch.records) == 1
    assert found[("reach_events_unmatched_total", ())] == 2
    assert found[("reach_event_age_seconds_count", ())] == 3
    assert found[("reach_event_age_seconds_sum", ())] == 180
    assert orjson.loads(batch.records[0][2])["ingested_ts"] == 1_790_000_060_000


def test_a_refused_rule_reload_is_counted(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    (tmp_path / "rules.yaml").write_text("triggers: [{id: broken}]\n")
    assert rt.rules.check() is False
    assert samples(rt.registry)[("reach_rules_reloads_total", (("result", "refused"),))] == 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes with deploy/stack.sh observe")
def test_promtool_finds_nothing_wrong_with_the_exposition(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    worker = WorkerMetrics(CollectorRegistry())
    worker.start_series({"email": ["smtp"]})
    for registry in (rt.registry, api_registry()):
        text = generate_latest(registry)
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, check=False
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
