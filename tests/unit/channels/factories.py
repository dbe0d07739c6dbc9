"""Builders for the objects channel tests need, with overridable defaults."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from channels.base import Delivery, ProviderConfig, ProviderContext, Rendered
from channels.email_smtp import SmtpProvider
from models.messages import ReachMessage, message_id_for
from tests.support.smtp_server import SmtpTestServer


def reach_message(n: int = 1, **overrides: Any) -> ReachMessage:
    """Message number ``n`` of a signup campaign, to ``user<n>@example.org``."""
    fields: dict[str, Any] = {
        "message_id": message_id_for("welcome", f"event-{n}", "email"),
        "user_id": f"user-{n}",
        "rule_id": "welcome",
        "template": "welcome_email",
        "channel": "email",
        "provider": "smtp-primary",
        "priority": 5,
        "event_id": f"event-{n}",
        "event_name": "signup",
        "event_ts": 1_700_000_000_000,
        "created_ts": 1_700_000_000_500,
        "variables": {"first_name": "Ada"},
        "contact": {"email": f"user{n}@example.org"},
    }
    fields.update(overrides)
    return ReachMessage(**fields)


def delivery(n: int = 1, *, title: str = "", text: str = "", html: str = "", **overrides: Any) -> Delivery:
    content = Rendered(
        title=title or f"Welcome #{n}",
        text=text or f"Hello Ada, this is message {n}.",
        html=html,
    )
    return Delivery(reach_message(n, **overrides), content)


def contact(address: str | None) -> Mapping[str, str]:
    return {} if address is None else {"email": address}


def smtp_config(options: Mapping[str, Any], name: str = "smtp-primary") -> ProviderConfig:
    return ProviderConfig(name=name, type="smtp", options=dict(options))


@contextlib.asynccontextmanager
async def smtp_provider(server: SmtpTestServer | None = None, **options: Any) -> AsyncIterator[SmtpProvider]:
    """A set-up :class:`SmtpProvider` aimed at ``server`` (``options`` override), closed after."""
    merged = server.client_options(**options) if server is not None else options
    provider = SmtpProvider(smtp_config(merged), ProviderContext())
    await provider.setup()
    try:
        yield provider
    finally:
        await provider.close()
