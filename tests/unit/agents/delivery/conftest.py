"""Builders for the delivery steps' unit tests: messages, a channel, fresh metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from channels.base import ProviderConfig
from channels.config import ChannelConfig
from models.messages import ReachMessage
from reach.metrics import WorkerMetrics

NOW = 1_790_000_000_000


def message(n: int = 1, provider: str = "primary", **changes: Any) -> ReachMessage:
    fields: dict[str, Any] = {
        "message_id": f"m-{n}",
        "user_id": f"u-{n}",
        "rule_id": "r",
        "template": "t",
        "channel": "sms",
        "provider": provider,
        "priority": 0,
        "event_id": f"e-{n}",
        "event_name": "ping",
        "event_ts": NOW - 5_000,
        "created_ts": NOW - 4_000,
        "variables": {},
        "contact": {"phone": f"+8613800000{n:03d}"},
        "platform": "ios",
    }
    fields.update(changes)
    return ReachMessage(**fields)


def sms_channel(limit: int | None = None) -> ChannelConfig:
    providers = (ProviderConfig("primary", "aliyun_sms", 70), ProviderConfig("backup", "tencent_sms", 30))
    return ChannelConfig("sms", 1.0, limit, providers)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> WorkerMetrics:
    return WorkerMetrics(registry)


def counted(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A counter's value for these labels (0 when it has no such series yet)."""
    return registry.get_sample_value(f"{name}_total", labels) or 0.0
