"""The collectors of every metric reach exports, built from :mod:`reach.metric_defs`.

Collectors are built against a registry passed in, so each test gets a fresh
one. A counter whose label values are known up front (channels, providers,
outcomes, platforms) is given its series at zero from the start, so a ratio
such as failed / attempted has a value before the first failure.
"""

from __future__ import annotations

import itertools
import platform as _platform
from collections.abc import Collection, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reach.metric_defs import BUILD_INFO, BY_NAME, LATENCY_BUCKETS, PLATFORMS, MetricDef

__all__ = ["LATENCY_BUCKETS", "ApiMetrics", "WorkerMetrics", "build", "platform_label"]

#: outcomes of a failed attempt (channels.base.OutcomeKind without ``sent``)
FAILED_OUTCOMES = ("retry", "permanent", "invalid_address", "unknown")
#: the engagement stages (models.tracking.Kind), and what a tracking event may do
ENGAGEMENT_KINDS = ("delivered", "displayed", "opened", "clicked")
TRACKING_OUTCOMES = ("first", "repeat", "unmatched")


OTHER_CATEGORY = "other"  # the category label of a message whose category is not configured


def category_label(category: str, configured: Collection[str]) -> str:
    """A message's category as a metric label, bounded to the configured ones (a message's
    category is data it brought)."""
    return category if category in configured else OTHER_CATEGORY


def build(registry: CollectorRegistry, name: str) -> Any:
    """The collector of the declared metric ``name``; a name not declared raises KeyError."""
    spec = BY_NAME[name]
    if spec.kind == "counter":
        return Counter(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, spec.help, spec.labels, registry=registry)
    if spec.kind == "histogram":
        return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)
    raise ValueError(f"{name} is an {spec.kind} metric; it has its own collector")


def platform_label(platform: str) -> str:
    """A bounded label value for a device platform taken from an event."""
    return platform if platform in PLATFORMS else "other"


class BuildInfo(Collector):
    """``reach_build_info{version, python} 1``, computed once; a plain collector, so it works
    in prometheus_client's multiprocess mode too (a Gauge there would gain a pid label)."""

    def __init__(self, spec: MetricDef = BUILD_INFO) -> None:
        self.spec = spec
        self.values = (_version(), _platform.python_version())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.spec.name, self.spec.help, labels=self.spec.labels)
        family.add_metric(list(self.values), 1)
        yield family


def _version() -> str:
    try:
        return metadata.version("reach")
    except metadata.PackageNotFoundError:
        return "unknown"


def add_standard_collectors(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, file descriptors), python_* (GC, version) and reach_build_info."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, BuildInfo()):
        registry.register(collector)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        add_standard_collectors(registry)
        self.events_consumed = build(registry, "reach_events_consumed")
        self.events_unmatched = build(registry, "reach_events_unmatched")
        self.events_dead_lettered = build(registry, "reach_events_dead_lettered")
        self.event_age = build(registry, "reach_event_age_seconds")
        self.rule_matches = build(registry, "reach_rule_matches")
        self.rules_reloads = build(registry, "reach_rules_reloads")
        self.rules_loaded = build(registry, "reach_rules_loaded")
        self.versions_unparsable = build(registry, "reach_rule_versions_unparsable")
        self.app_version_fallbacks = build(registry, "reach_app_version_fallbacks")
        self.messages_delayed = build(registry, "reach_messages_delayed")
        self.delayed_lateness = build(registry, "reach_delayed_lateness_seconds")
        self.messages_suppressed = build(registry, "reach_messages_suppressed")
        self.cancels_recorded = build(registry, "reach_cancels_recorded")
        self.tasks = build(registry, "reach_tasks")
        self.task_runs = build(registry, "reach_task_runs")
        self.task_messages_planned = build(registry, "reach_task_messages_planned")
        self.task_messages = build(registry, "reach_task_messages")
        self.delivery_attempts = build(registry, "reach_delivery_attempts")
        self.messages_sent = build(registry, "reach_messages_sent")
        self.messages_failed = build(registry, "reach_messages_failed")
        self.messages_failed_codes = build(registry, "reach_messages_failed_codes")
        self.messages_unroutable = build(registry, "reach_messages_unroutable")
        self.messages_rerouted = build(registry, "reach_messages_rerouted")
        self.messages_dead_lettered = build(registry, "reach_messages_dead_lettered")
        self.addresses_dead = build(registry, "reach_addresses_dead")
        self.circuit_state = build(registry, "reach_provider_circuit_state")
        self.messages_throttled = build(registry, "reach_messages_throttled")
        self.messages_deduplicated = build(registry, "reach_messages_deduplicated")
        # reason: opted_out, frequency_cap, quiet_hours; action: suppressed (a final result
        # row) or deferred (back on the deferred queue); category "other" when not configured.
        self.messages_held = build(registry, "reach_messages_held")
        self.send_latency = build(registry, "reach_send_batch_seconds")
        self.end_to_end_latency = build(registry, "reach_end_to_end_seconds")
        self.deferred_pending = build(registry, "reach_deferred_pending")
        # step: channel.<name>; reason: bad_outbox_record, result_refused. Events and
        # profiles that fail alone are counted by reach_events_dead_lettered{reason}.
        self.items_refused = build(registry, "reach_items_refused")
        self.engagement = build(registry, "reach_engagement")
        self.tracking_events = build(registry, "reach_tracking_events")
        for result in ("ok", "refused"):
            self.rules_reloads.labels(result)

    def start_series(self, providers: Mapping[str, Sequence[str]]) -> None:
        """Series at zero for every channel's providers, platforms and failed outcomes."""
        for channel, names in providers.items():
            self.rule_matches.labels(channel)
            self.messages_deduplicated.labels(channel)
            self.messages_unroutable.labels(channel)
            for reason in ("bad_outbox_record", "result_refused"):
                self.items_refused.labels(f"channel.{channel}", reason)
            for provider in names:
                self._start_provider(channel, provider)

    def start_engagement_series(
        self, providers: Mapping[str, Sequence[str]], categories: Sequence[str]
    ) -> None:
        """Engagement series at zero for every stage of every provider, platform and category."""
        for kind, outcome in itertools.product(ENGAGEMENT_KINDS, TRACKING_OUTCOMES):
            self.tracking_events.labels(kind, outcome)
        self.tracking_events.labels("", "bad")  # a record that does not decode has no kind
        sends = [(channel, provider) for channel, names in providers.items() for provider in names]
        platforms, groups = (*PLATFORMS, "other"), (*categories, "other")
        for kind, (channel, provider), platform, category in itertools.product(
            ENGAGEMENT_KINDS, sends, platforms, groups
        ):
            self.engagement.labels(kind, channel, provider, platform, category)

    def _start_provider(self, channel: str, provider: str) -> None:
        for counter in (self.delivery_attempts, self.messages_dead_lettered, self.messages_throttled):
            counter.labels(channel, provider)
        for platform in (*PLATFORMS, "other"):
            self.messages_sent.labels(channel, provider, platform)
            for outcome in FAILED_OUTCOMES:
                self.messages_failed.labels(channel, provider, platform, outcome)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        add_standard_collectors(registry)
        self.requests = build(registry, "reach_api_request_seconds")
        self.events_accepted = build(registry, "reach_api_events_accepted")
        # status: delivered | failed (the receipt made the message final; each message at most
        # once, so delivered / (delivered + failed) is the success rate), stale (the message was
        # already final), progress (a non-final provider status), unmatched (no send result for
        # it yet), duplicate (the same receipt again). platform is "" unless a result row matched.
        self.receipts = build(registry, "reach_receipts")
        self.receipts_rejected = build(registry, "reach_receipts_rejected")
        # Incoming messages (api/inbound.py): opt-out keywords become preferences
        self.inbound_messages = build(registry, "reach_inbound_messages")
        self.inbound_rejected = build(registry, "reach_inbound_rejected")
        # Access (api/auth.py, api/rate_limit.py)
        self.auth_refused = build(registry, "reach_api_auth_refused")
        self.rate_limited = build(registry, "reach_api_rate_limited")
        self.rate_limit_unavailable = build(registry, "reach_api_rate_limit_unavailable")
        self.tracking_events = build(registry, "reach_api_tracking_events")
        for kind in ENGAGEMENT_KINDS:
            for result in ("accepted", "dropped"):
                self.tracking_events.labels(kind, result)
        for kind in ("opened", "clicked"):  # only links can be refused
            self.tracking_events.labels(kind, "refused")
