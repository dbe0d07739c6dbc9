"""Every metric reach exports, declared once.

Collectors are built against a registry passed in, so each test gets a fresh
one. Labels are bounded sets (channel, provider, reason, status, platform,
route): never a user id, address or token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_consumed = Counter(
            "reach_events_consumed", "Behaviour events read from the events topic", registry=registry
        )
        self.events_dead_lettered = Counter(
            "reach_events_dead_lettered",
            "Events sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.rule_matches = Counter(
            "reach_rule_matches", "Reach messages created by trigger rules", ["channel"], registry=registry
        )
        self.messages_sent = Counter(
            "reach_messages_sent",
            "Messages accepted by a provider",
            ["channel", "provider"],
            registry=registry,
        )
        self.messages_failed = Counter(
            "reach_messages_failed",
            "Delivery attempts that did not succeed, by outcome",
            ["channel", "provider", "outcome"],
            registry=registry,
        )
        self.messages_throttled = Counter(
            "reach_messages_throttled",
            "Messages deferred to a later throttle window",
            ["channel", "provider"],
            registry=registry,
        )
        self.messages_deduplicated = Counter(
            "reach_messages_deduplicated",
            "Messages skipped because their id was already sent",
            ["channel"],
            registry=registry,
        )
        self.send_latency = Histogram(
            "reach_send_batch_seconds",
            "Time a provider took to send one batch",
            ["channel", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.end_to_end_latency = Histogram(
            "reach_end_to_end_seconds",
            "Event time to delivery result, per message",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "reach_consumer_lag",
            "Messages behind the end of each assigned partition",
            ["topic", "partition"],
            registry=registry,
        )
        self.deferred_pending = Gauge(
            "reach_deferred_pending", "Messages waiting for a later window or retry", registry=registry
        )
        self.rules_reloads = Counter(
            "reach_rules_reloads", "Rule-file reloads, by result", ["result"], registry=registry
        )
        self.rules_loaded = Gauge(
            "reach_rules_loaded", "Rules currently serving, by kind", ["kind"], registry=registry
        )


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Histogram(
            "reach_api_request_seconds",
            "HTTP API latency by route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events_accepted = Counter(
            "reach_api_events_accepted", "Events accepted by POST /v1/events", registry=registry
        )
