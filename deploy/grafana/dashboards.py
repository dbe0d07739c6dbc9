"""reach's Grafana dashboards as code, with Grafana's foundation SDK.

``python -m deploy.grafana.dashboards`` writes ``reach-service.json`` and
``reach-business.json`` beside this file; a test fails when they differ from
what this code generates, and another runs every panel's query against a real
Prometheus that scraped a running pipeline. Panels are declared as data
(:data:`SERVICE`, :data:`BUSINESS`) so the tests can read their queries.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode

HERE = Path(__file__).resolve().parent
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    threshold: float | None = None  # a line drawn at this value (an objective)
    bad_below: bool = False  # the objective is a floor (success rate), not a ceiling (latency)
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Board:
    uid: str
    title: str
    panels: tuple[Panel, ...]

    @property
    def path(self) -> Path:
        return HERE / f"{self.uid}.json"


SERVICE = Board(
    "reach-service",
    "reach: service",
    (
        Panel(
            "Throughput",
            "ops",
            (
                ("sum(rate(reach_events_consumed_total[5m]))", "events in"),
                ("sum(rate(reach_rule_matches_total[5m]))", "messages planned"),
                ("sum(rate(reach_delivery_attempts_total[5m]))", "delivery attempts"),
                ("sum(rate(reach_messages_sent_total[5m]))", "sent"),
            ),
        ),
        Panel(
            "End-to-end latency (ingestion to result)",
            "s",
            tuple(
                (
                    f"histogram_quantile({q}, sum by (le) (rate(reach_end_to_end_seconds_bucket[5m])))",
                    f"p{q[2:]}",
                )
                for q in ("0.5", "0.95", "0.99")
            ),
        ),
        Panel(
            "Event age at ingestion (p95)",
            "s",
            (("histogram_quantile(0.95, sum by (le) (rate(reach_event_age_seconds_bucket[5m])))", "p95"),),
            description="How old events are when reach takes them in: client buffering, not reach latency.",
        ),
        Panel(
            "Consumer lag by topic (broker view)",
            "short",
            (("sum by (topic) (reach_consumer_lag)", "{{topic}}"), ("reach_deferred_pending", "deferred")),
        ),
        Panel(
            "Failures by outcome",
            "ops",
            (("sum by (outcome) (rate(reach_messages_failed_total[5m]))", "{{outcome}}"),),
        ),
        Panel(
            "Dead letters and refused items",
            "ops",
            (
                ("sum by (channel) (rate(reach_messages_dead_lettered_total[5m]))", "deliveries {{channel}}"),
                ("sum(rate(reach_events_dead_lettered_total[5m]))", "events"),
                ("sum(rate(reach_items_refused_total[5m]))", "refused items"),
            ),
        ),
        Panel(
            "CPU",
            "percentunit",
            (('sum by (job) (rate(process_cpu_seconds_total{job=~"reach-.*"}[5m]))', "{{job}}"),),
        ),
        Panel(
            "Memory (resident)",
            "bytes",
            (('sum by (job) (process_resident_memory_bytes{job=~"reach-.*"})', "{{job}}"),),
        ),
        Panel(
            "API p95 by route",
            "s",
            (
                (
                    "histogram_quantile(0.95, sum by (le, route) "
                    "(rate(reach_api_request_seconds_bucket[5m])))",
                    "{{route}}",
                ),
            ),
            threshold=0.2,
        ),
        Panel(
            "API requests by status",
            "reqps",
            (("sum by (status) (rate(reach_api_request_seconds_count[5m]))", "{{status}}"),),
        ),
        Panel(
            "Circuit state per provider (0 closed, 1 half-open, 2 open)",
            "short",
            (("max by (channel, provider) (reach_provider_circuit_state)", "{{channel}}/{{provider}}"),),
        ),
        Panel(
            "Tracking events by outcome",
            "ops",
            (
                ("sum by (kind, outcome) (rate(reach_tracking_events_total[5m]))", "{{kind}} {{outcome}}"),
                (
                    "sum by (kind, result) (rate(reach_api_tracking_events_total[5m]))",
                    "API {{kind}} {{result}}",
                ),
            ),
            description="Consumed by the worker (first, repeat, unmatched, bad) and emitted by the API "
            "(accepted, dropped while Kafka is unavailable, refused links).",
        ),
        Panel(
            "Rule reloads",
            "short",
            (("sum by (result) (increase(reach_rules_reloads_total[1h]))", "{{result}}"),),
        ),
    ),
)

SUCCESS = (
    "sum by (channel, provider) (rate(reach_messages_sent_total[10m])) / ("
    "sum by (channel, provider) (rate(reach_messages_sent_total[10m])) + "
    'sum by (channel, provider) (rate(reach_messages_failed_total{outcome!="retry"}[10m])))'
)

ENGAGED = 'increase(reach_engagement_total{kind=~"opened|clicked"}[1h])'


def engagement_rate(kind: str) -> str:
    """The share of the hour's sent messages of a channel that reached ``kind`` in the hour."""
    return (
        f'sum by (channel) (increase(reach_engagement_total{{kind="{kind}"}}[1h])) / '
        "(sum by (channel) (increase(reach_messages_sent_total[1h])) > 0)"
    )


BUSINESS = Board(
    "reach-business",
    "reach: business",
    (
        Panel(
            "Sent by channel",
            "short",
            (("sum by (channel) (increase(reach_messages_sent_total[1h]))", "{{channel}}"),),
        ),
        Panel(
            "Sent by device platform",
            "short",
            (("sum by (platform) (increase(reach_messages_sent_total[1h]))", "{{platform}}"),),
        ),
        Panel(
            "Sent by provider",
            "short",
            (
                (
                    "sum by (channel, provider) (increase(reach_messages_sent_total[1h]))",
                    "{{channel}}/{{provider}}",
                ),
            ),
        ),
        Panel(
            "Delivered (provider receipts) by channel and platform",
            "short",
            (
                (
                    'sum by (channel, platform) (increase(reach_receipts_total{status="delivered"}[1h]))',
                    "{{channel}} {{platform}}",
                ),
            ),
        ),
        Panel(
            "Engagement funnel by channel: sent, delivered, displayed, opened, clicked",
            "short",
            (
                ("sum by (channel) (increase(reach_messages_sent_total[1h]))", "sent {{channel}}"),
                ("sum by (kind, channel) (increase(reach_engagement_total[1h]))", "{{kind}} {{channel}}"),
            ),
            description="Each message counts once per stage, the first time it reaches it.",
        ),
        Panel(
            "Open and click rate by channel",
            "percentunit",
            (
                (engagement_rate("opened"), "opened {{channel}}"),
                (engagement_rate("clicked"), "clicked {{channel}}"),
            ),
            description="Stages reached in the hour over messages sent in the hour: an approximation of "
            "the funnel; GET /v1/stats/delivery has the exact one per send cohort.",
        ),
        Panel(
            "Opened and clicked by device platform",
            "short",
            ((f"sum by (kind, platform) ({ENGAGED})", "{{kind}} {{platform}}"),),
        ),
        Panel(
            "Opened and clicked by provider",
            "short",
            ((f"sum by (kind, channel, provider) ({ENGAGED})", "{{kind}} {{channel}}/{{provider}}"),),
        ),
        Panel(
            "Engagement by category",
            "short",
            (("sum by (kind, category) (increase(reach_engagement_total[1h]))", "{{kind}} {{category}}"),),
        ),
        Panel(
            "Delivery success rate by channel and provider (objective 80%)",
            "percentunit",
            ((SUCCESS, "{{channel}}/{{provider}}"),),
            threshold=0.8,
            bad_below=True,
        ),
        Panel(
            "Suppressed: deduplicated, throttled, unroutable",
            "short",
            (
                (
                    "sum by (channel) (increase(reach_messages_deduplicated_total[1h]))",
                    "deduplicated {{channel}}",
                ),
                ("sum by (channel) (increase(reach_messages_throttled_total[1h]))", "throttled {{channel}}"),
                (
                    "sum by (channel) (increase(reach_messages_unroutable_total[1h]))",
                    "unroutable {{channel}}",
                ),
                ("sum(increase(reach_events_unmatched_total[1h]))", "events matching no rule"),
            ),
        ),
        Panel(
            "Dead-lettered by reason",
            "short",
            (
                ("sum by (reason) (increase(reach_events_dead_lettered_total[1h]))", "event: {{reason}}"),
                (
                    "sum by (channel) (increase(reach_messages_dead_lettered_total[1h]))",
                    "delivery: {{channel}}",
                ),
                (
                    "sum by (channel, code) (increase(reach_messages_failed_codes_total[1h]))",
                    "failed {{channel}}: {{code}}",
                ),
            ),
        ),
    ),
)

BOARDS = (SERVICE, BUSINESS)


def panel(spec: Panel) -> timeseries.Panel:
    built = (
        timeseries.Panel()
        .title(spec.title)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .height(8)
        .span(12)
        .description(spec.description)
    )
    for number, (expr, legend) in enumerate(spec.queries):
        built = built.with_target(
            prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + number))
        )
    if spec.threshold is not None:
        base, over = ("red", "green") if spec.bad_below else ("green", "red")
        steps = [Threshold(value=None, color=base), Threshold(value=spec.threshold, color=over)]
        built = built.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        built = built.thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE))
    return built


def build(board: Board) -> dict[str, Any]:
    built = (
        dashboard.Dashboard(board.title)
        .uid(board.uid)
        .tags(["reach"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for spec in board.panels:
        built = built.with_panel(panel(spec))
    encoded: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(built.build()))
    return encoded


def rendered(board: Board) -> str:
    return json.dumps(build(board), indent=2, sort_keys=True) + "\n"


def main() -> int:
    for board in BOARDS:
        board.path.write_text(rendered(board))
        print(f"wrote {board.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
