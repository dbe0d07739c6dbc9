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
            "Delivery attempts that did not succeed, by outcome and the provider's error code",
            ["channel", "provider", "outcome", "code"],
            registry=registry,
        )
        self.delivery_attempts = Counter(
            "reach_delivery_attempts",
            "Messages handed to a provider (each retry counts again)",
            ["channel", "provider"],
            registry=registry,
        )
        self.messages_unroutable = Counter(
            "reach_messages_unroutable",
            "Messages a rule chose a channel for that no provider of it can address",
            ["channel"],
            registry=registry,
        )
        self.messages_rerouted = Counter(
            "reach_messages_rerouted",
            "Messages moved to another provider of their channel, by reason",
            ["channel", "from_provider", "to_provider", "reason"],
            registry=registry,
        )
        self.messages_dead_lettered = Counter(
            "reach_messages_dead_lettered",
            "Messages that exhausted their retry budget, written to the delivery dead-letter topic",
            ["channel", "provider"],
            registry=registry,
        )
        self.addresses_dead = Counter(
            "reach_addresses_dead",
            "Addresses or device tokens recorded as unusable, and messages skipped because of one",
            ["channel", "provider", "event"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "reach_provider_circuit_state",
            "Circuit breaker per provider: 0 closed (sending), 1 half-open (probing), 2 open (paused)",
            ["channel", "provider"],
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
            "Time a provider took to send one batch (its requests run concurrently)",
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
        # step: channel.<name>; reason: bad_outbox_record, result_refused. Events and
        # profiles that fail alone are counted by reach_events_dead_lettered{reason}.
        self.items_refused = Counter(
            "reach_items_refused",
            "Items isolated from their batch because they could not be processed or stored",
            ["step", "reason"],
            registry=registry,
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
        # status: delivered | failed (the receipt made the message final; each message at most
        # once, so delivered / (delivered + failed) is the success rate), stale (the message was
        # already final), progress (a non-final provider status), unmatched (no send result for
        # it yet), duplicate (the same receipt again). platform is "" unless a result row matched.
        self.receipts = Counter(
            "reach_receipts",
            "Provider delivery receipts accepted, by what they did",
            ["channel", "provider", "platform", "status"],
            registry=registry,
        )
        self.receipts_rejected = Counter(
            "reach_receipts_rejected",
            "Receipt callbacks refused, by reason (bad_signature, bad_token, not_configured, bad_body)",
            ["provider", "reason"],
            registry=registry,
        )
        # Access (api/auth.py, api/rate_limit.py). kind: key | user; reason: a short code
        # (missing, unknown_key, expired, forbidden, ...), never the credential.
        self.auth_refused = Counter(
            "reach_api_auth_refused",
            "Requests refused for their credential (401) or its scope (403), by reason",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "reach_api_rate_limited", "Requests refused with 429, by caller kind", ["kind"], registry=registry
        )
        self.rate_limit_unavailable = Counter(
            "reach_api_rate_limit_unavailable",
            "Requests let through unlimited because Redis did not answer the rate limiter",
            registry=registry,
        )
