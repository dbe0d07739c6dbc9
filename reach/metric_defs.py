"""Every metric reach exports, by name, in one list.

A leaf module (it imports nothing of the project): the collectors in
:mod:`reach.metrics` are built from these definitions, and the dashboards,
the alert rules and ``docs/operations.md`` are checked against them
(``tests/unit/test_metric_defs.py``). A name used anywhere else must be here.

Labels are bounded sets (channel, provider, outcome, reason, status,
platform, category, kind, route, topic, partition, group): never a user id,
address, URL or token.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Kind = Literal["counter", "gauge", "histogram", "info"]
Process = Literal["worker", "api", "exporter"]  # which process exports it

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: an event's age when reach ingests it: clients may buffer events for hours
AGE_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400)

#: device platforms a label may carry; any other value is counted as ``other``
PLATFORMS = ("ios", "android", "web", "")


@dataclasses.dataclass(frozen=True)
class MetricDef:
    name: str  # as declared; a counter is exported with ``_total``, a histogram as its series
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    process: Process = "worker"

    def exported(self) -> tuple[str, ...]:
        """The series names Prometheus scrapes for this metric."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def _c(name: str, help: str, *labels: str, process: Process = "worker") -> MetricDef:
    return MetricDef(name, "counter", help, labels, process=process)


def _g(name: str, help: str, *labels: str, process: Process = "worker") -> MetricDef:
    return MetricDef(name, "gauge", help, labels, process=process)


def _h(
    name: str,
    help: str,
    *labels: str,
    buckets: tuple[float, ...] = LATENCY_BUCKETS,
    process: Process = "worker",
) -> MetricDef:
    return MetricDef(name, "histogram", help, labels, buckets, process)


METRICS: tuple[MetricDef, ...] = (
    # -- worker: events and rules
    _c("reach_events_consumed", "Behaviour events read from the events topic"),
    _c("reach_events_unmatched", "Events that matched no trigger rule"),
    _c("reach_events_dead_lettered", "Events sent to the dead-letter topic, by reason", "reason"),
    _h(
        "reach_event_age_seconds",
        "Age of an event when reach ingested it (ingestion time minus the event's own ts)",
        buckets=AGE_BUCKETS,
    ),
    _c("reach_rule_matches", "Reach messages created by trigger rules", "channel"),
    _c("reach_rules_reloads", "Rule-file reloads, by result (ok, refused)", "result"),
    _g("reach_rules_loaded", "Rules currently serving, by kind", "kind"),
    _c(
        "reach_rule_versions_unparsable",
        "Event or message values of a version(...) field that were not a version (read as absent)",
    ),
    # fallback: template, skip, channel (a template's fallback for apps below its min_app_version)
    _c(
        "reach_app_version_fallbacks",
        "Messages whose app was below their template's min_app_version, by the fallback taken",
        "channel",
        "fallback",
    ),
    # -- worker: delayed trigger sends (a rule's delay and cancel_if)
    _c(
        "reach_messages_delayed",
        "Messages of a trigger with `delay` scheduled on the deferred queue",
        "channel",
    ),
    _h(
        "reach_delayed_lateness_seconds",
        "How long after its due time a delayed message first reached its channel agent",
        "channel",
    ),
    # reason: cancelled (a later event of the user matched the trigger's cancel_if)
    _c(
        "reach_messages_suppressed",
        "Messages deliberately not sent, recorded with status suppressed, by reason",
        "channel",
        "reason",
    ),
    _c(
        "reach_cancels_recorded",
        "Waiting delayed messages marked cancelled by a later event matching cancel_if",
    ),
    # -- worker: send-time policies (agents/delivery/policy.py)
    _c(
        "reach_messages_held",
        "Messages a send-time policy suppressed or deferred, by reason",
        "reason",
        "action",
        "channel",
        "category",
    ),
    # -- worker: reach tasks. No task number or user id is a label: per-task figures are the API's.
    _g("reach_tasks", "Reach tasks by status and schedule kind", "status", "schedule"),
    _c("reach_task_runs", "Task runs started, by schedule kind", "schedule"),
    _c(
        "reach_task_messages_planned",
        "Task messages put on the outbox (a page planned again after a crash counts again)",
        "channel",
    ),
    # status: sent, failed, unknown, suppressed (the task was cancelled before it went)
    _c("reach_task_messages", "Final outcomes of task messages", "channel", "status"),
    # -- worker: delivery
    _c(
        "reach_delivery_attempts",
        "Messages handed to a provider (each retry counts again)",
        "channel",
        "provider",
    ),
    _c("reach_messages_sent", "Messages accepted by a provider", "channel", "provider", "platform"),
    _c(
        "reach_messages_failed",
        "Delivery attempts that did not succeed, by outcome",
        "channel",
        "provider",
        "platform",
        "outcome",
    ),
    # Apart from reach_messages_failed: a code's series starts at its first failure, and
    # Prometheus sees no increase in a series' first sample, so ratios must not depend on it.
    _c(
        "reach_messages_failed_codes",
        "Failed delivery attempts by the provider's error code (SMTP reply, vendor code)",
        "channel",
        "provider",
        "code",
    ),
    _c(
        "reach_messages_unroutable",
        "Messages a rule chose a channel for that no provider of it can address",
        "channel",
    ),
    _c(
        "reach_messages_rerouted",
        "Messages moved to another provider of their channel, by reason",
        "channel",
        "from_provider",
        "to_provider",
        "reason",
    ),
    _c(
        "reach_messages_dead_lettered",
        "Messages that exhausted their retry budget, written to the delivery dead-letter topic",
        "channel",
        "provider",
    ),
    _c(
        "reach_addresses_dead",
        "Addresses or device tokens recorded as unusable, and messages skipped because of one",
        "channel",
        "provider",
        "event",
    ),
    _g(
        "reach_provider_circuit_state",
        "Circuit breaker per provider: 0 closed (sending), 1 half-open (probing), 2 open (paused)",
        "channel",
        "provider",
    ),
    _c("reach_messages_throttled", "Messages deferred to a later throttle window", "channel", "provider"),
    _c("reach_messages_deduplicated", "Messages skipped because their id was already sent", "channel"),
    _h(
        "reach_send_batch_seconds",
        "Time a provider took to send one batch (its requests run concurrently)",
        "channel",
        "provider",
    ),
    _h(
        "reach_end_to_end_seconds",
        "From reach's ingestion of the event (its append time on the events topic) to the delivery result",
        "channel",
    ),
    _g("reach_deferred_pending", "Messages waiting for a later window or retry"),
    _c(
        "reach_items_refused",
        "Items isolated from their batch because they could not be processed or stored",
        "step",
        "reason",
    ),
    # -- worker: engagement (agents/tracking.py). kind: delivered, displayed, opened, clicked.
    _c(
        "reach_engagement",
        "Messages that reached an engagement stage for the first time, by the labels of their send",
        "kind",
        "channel",
        "provider",
        "platform",
        "category",
    ),
    # outcome: first (recorded a stage), repeat (the stage was already recorded), unmatched
    # (recorded, but the message has no send result to label it by), bad (did not decode)
    _c("reach_tracking_events", "Tracking events consumed, by what they did", "kind", "outcome"),
    # -- API
    _h(
        "reach_api_request_seconds",
        "HTTP API latency by route template and status",
        "method",
        "route",
        "status",
        process="api",
    ),
    _c("reach_api_events_accepted", "Events accepted by POST /v1/events", process="api"),
    _c(
        "reach_receipts",
        "Provider delivery receipts accepted, by what they did",
        "channel",
        "provider",
        "platform",
        "status",
        process="api",
    ),
    # result: accepted (on the tracking topic), dropped (Kafka did not take it in time),
    # refused (a tracking link that does not verify)
    _c(
        "reach_api_tracking_events",
        "Tracking events from opens, clicks, pop-up displays, inbox reads and receipts",
        "kind",
        "result",
        process="api",
    ),
    _c(
        "reach_receipts_rejected",
        "Receipt callbacks refused, by reason (bad_signature, bad_token, unknown_key, not_configured, ...)",
        "provider",
        "reason",
        process="api",
    ),
    _c(
        "reach_inbound_messages",
        "Incoming SMS a provider forwarded (POST /v1/inbound), by opt-out keyword type "
        "(stop, start, help, none) and what reach did (applied, unknown_number, ignored)",
        "provider",
        "opt_out",
        "outcome",
        process="api",
    ),
    _c(
        "reach_inbound_rejected",
        "Incoming-message webhooks refused, by reason (bad_signature, unknown_key, bad_algorithm, ...)",
        "provider",
        "reason",
        process="api",
    ),
    # Access (api/auth.py, api/rate_limit.py). reason is a short code (missing,
    # unknown_key, expired, forbidden, ...), never the credential.
    _c(
        "reach_api_auth_refused",
        "Requests refused for their credential (401) or its scope (403), by reason",
        "reason",
        process="api",
    ),
    _c(
        "reach_api_rate_limited",
        "Requests refused with 429, by caller kind (key, user)",
        "kind",
        process="api",
    ),
    _c(
        "reach_api_rate_limit_unavailable",
        "Requests let through unlimited because Redis did not answer the rate limiter",
        process="api",
    ),
    # -- lag exporter (reach exporter): the broker's view of the consumer group
    _g(
        "reach_consumer_lag",
        "Messages between the group's committed offset and the end of each partition",
        "group",
        "topic",
        "partition",
        process="exporter",
    ),
    _g(
        "reach_consumer_committed_offset",
        "The consumer group's committed offset per partition (the log start when it has none)",
        "group",
        "topic",
        "partition",
        process="exporter",
    ),
    _g(
        "reach_topic_end_offset",
        "The end offset (high watermark) of each partition",
        "topic",
        "partition",
        process="exporter",
    ),
    _g("reach_exporter_kafka_up", "1 when the last lag query reached the broker, else 0", process="exporter"),
)

#: metrics every reach process exports, beside prometheus_client's process_* and python_*
BUILD_INFO = MetricDef(
    "reach_build_info", "info", "The reach version and Python running this process", ("version", "python")
)

BY_NAME = {m.name: m for m in (*METRICS, BUILD_INFO)}


def exported_names() -> frozenset[str]:
    """Every series name reach itself exports (without prometheus_client's standard ones)."""
    names = {series for metric in METRICS for series in metric.exported()}
    return frozenset(names | {"reach_build_info"})
