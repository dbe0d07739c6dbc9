"""Pure decisions of the pipeline: event -> reach messages, outcome -> result.

Nothing here does I/O; the agents call these functions and do the sending.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from channels.base import Delivery, Outcome, OutcomeKind, Rendered
from channels.routing import WeightedChooser
from models.events import Event
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage, message_id_for
from models.profiles import UserProfile
from rules.engine import RuleEngine
from rules.errors import TemplateRenderError
from rules.model import Template, content_for


def trigger_fact(event: Event, profile: UserProfile | None) -> dict[str, Any]:
    fact = event.as_dict()
    fact["segments"] = list(profile.segments) if profile else []
    return fact


def reachable_channels(choosers: Mapping[str, WeightedChooser], contact: Mapping[str, str]) -> list[str]:
    """The channels with a provider that can address this contact (inbox and pop-ups need none)."""
    return [name for name, chooser in choosers.items() if chooser.can_reach(contact)]


@dataclasses.dataclass(frozen=True, slots=True)
class EventPlan:
    """What one event causes: its messages (delayed ones have ``due_ts``) and the ids of
    the triggers whose ``cancel_if`` it matched (their waiting messages are cancelled)."""

    messages: list[ReachMessage]
    cancels: list[str]


def plan_event_fully(
    event: Event,
    profile: UserProfile | None,
    engine: RuleEngine,
    choosers: Mapping[str, WeightedChooser],
    now_ms: int,
    unroutable: Callable[[str, str], None] | None = None,
    ingested_ms: int = 0,
    unmatched: Callable[[], None] | None = None,
    default_timezone: str = "UTC",
) -> EventPlan:
    """The messages an event causes, one per matching trigger and selected channel, and
    the triggers it cancels. A trigger with a ``delay`` makes messages due that long
    after ``now_ms`` (``due_ts`` and ``not_before``).

    A selected channel with no provider that can address the user (SMS for a
    user without a phone number) yields no message; ``unroutable(rule_id,
    channel)`` is told, so the agent can count it. ``ingested_ms`` is when reach took the
    event in (its record's time on the events topic), carried for the end-to-end latency.
    ``unmatched()`` is told when no trigger rule matches the event.
    """
    fact = trigger_fact(event, profile)
    contact = dict(profile.contact) if profile else {}
    timezone = (profile.timezone if profile else "") or default_timezone
    reachable = reachable_channels(choosers, contact)
    matches = engine.match_event(fact)
    messages = []
    if not matches.triggers and unmatched is not None:
        unmatched()
    for rule in matches.triggers:
        selection_fact = {
            "rule_id": rule.id,
            "template": rule.template,
            "priority": rule.priority,
            "event": event.name,
            "platform": event.platform,
            "segments": fact["segments"],
            "reachable": reachable,
        }
        dedup = rule.dedup_for(fact)
        due = now_ms + rule.delay_ms if rule.delay_ms else 0
        for channel in engine.select_channels(rule.channels, selection_fact):
            if channel not in reachable:
                if unroutable is not None:
                    unroutable(rule.id, channel)
                continue
            messages.append(
                ReachMessage(
                    message_id=message_id_for(rule.id, dedup, channel),
                    user_id=event.user_id,
                    rule_id=rule.id,
                    template=rule.template,
                    channel=channel,
                    provider=choosers[channel].choose(contact=contact).name,
                    priority=rule.priority,
                    event_id=event.event_id,
                    event_name=event.name,
                    event_ts=event.ts,
                    created_ts=now_ms,
                    variables=_variables(event),
                    contact=choosers[channel].contact_for(contact),
                    platform=event.platform,
                    ingested_ts=ingested_ms,
                    not_before=due,
                    due_ts=due,
                    cancellable=rule.cancel_condition is not None,
                    category=rule.category,
                    timezone=timezone,
                )
            )
    return EventPlan(messages, [rule.id for rule in matches.cancels])


def end_to_end_seconds(message: ReachMessage, done_ms: int) -> float:
    """From reach's ingestion of the event to ``done_ms``; from the rule match for messages
    planned before ingestion times were carried. Never from the client's ``ts``, which
    may be hours old (that age is ``reach_event_age_seconds``)."""
    start = max(
        message.ingested_ts or message.created_ts, message.due_ts
    )  # a delayed send: from its due time
    return max(0, done_ms - start) / 1000


def event_age_seconds(event: Event, ingested_ms: int) -> float:
    """How old the event was when reach took it in; a client clock ahead of ours counts 0."""
    return max(0, ingested_ms - event.ts) / 1000


def _variables(event: Event) -> dict[str, Any]:
    return {
        "user_id": event.user_id,
        "event": event.name,
        "event_id": event.event_id,
        "properties": event.properties,
        "device": event.device,
    }


def render(message: ReachMessage, templates: Mapping[str, Template]) -> Rendered | Outcome:
    """The message's content, or a permanent outcome saying why it cannot be rendered:
    ``template_variable_missing`` (naming the variable) when the message lacks a variable
    its template prints, ``template_error`` for any other failure.

    The template is chosen for the app version the event came from (``device.app_version``):
    an app below a template's ``min_app_version`` gets its fallback, or nothing
    (``app_version_too_old``).
    """
    template, reason = content_for(templates, message.template, app_version_of(message))
    if template is None:
        return Outcome.permanent(reason, _WHY_NOT_RENDERED[reason].format(template=message.template))
    try:
        return template.render(message.variables)
    except TemplateRenderError as exc:
        code = "template_variable_missing" if exc.missing_variable else "template_error"
        return Outcome.permanent(code, str(exc)[:300])
    except Exception as exc:  # a template bug must fail this message, not the batch
        return Outcome.permanent("template_error", f"{type(exc).__name__}: {exc}"[:300])


_WHY_NOT_RENDERED = {
    "unknown_template": "template {template!r} is not loaded",
    "app_version_too_old": "the app is older than template {template!r} needs; its fallback is skip",
}


def app_version_of(message: ReachMessage) -> object:
    """The app version the message's event came from, when it said (None otherwise)."""
    device = message.variables.get("device")
    return device.get("app_version") if isinstance(device, Mapping) else None


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, rng: random.Random) -> int:
    """Capped exponential backoff with full jitter for the attempt that just failed."""
    ceiling = min(cap_ms, base_ms * 2 ** max(0, attempt - 1))
    return max(base_ms // 2, int(rng.uniform(0, ceiling)))


STATUS_OF = {
    OutcomeKind.SENT: DeliveryStatus.SENT,
    OutcomeKind.PERMANENT: DeliveryStatus.FAILED,
    OutcomeKind.INVALID_ADDRESS: DeliveryStatus.FAILED,
    OutcomeKind.UNKNOWN: DeliveryStatus.UNKNOWN,
    OutcomeKind.RETRY: DeliveryStatus.RETRYING,
}


def result_for(
    message: ReachMessage, outcome: Outcome, status: DeliveryStatus, attempted_at: int, completed_at: int
) -> DeliveryResult:
    return DeliveryResult(
        message_id=message.message_id,
        attempt=message.attempt,
        user_id=message.user_id,
        rule_id=message.rule_id,
        channel=message.channel,
        provider=message.provider,
        status=status,
        platform=message.platform,
        event_ts=message.event_ts,
        attempted_at=attempted_at,
        completed_at=completed_at,
        error_code=outcome.code,
        error=outcome.detail[:500],
        provider_message_id=outcome.provider_message_id,
        category=message.category,
    )


def content_bytes(content: Rendered) -> int:
    """The size a channel's limit applies to: title, text and html, as UTF-8."""
    return sum(
        len(part.encode("utf-8", "surrogatepass")) for part in (content.title, content.text, content.html)
    )


def oversize(content: Rendered, max_content_bytes: int) -> Outcome | None:
    """The permanent outcome for content over the channel's limit, or None when it fits."""
    if len(content.title) + len(content.text) + len(content.html) > max_content_bytes:
        return Outcome.permanent("content_too_large", f"rendered content is over {max_content_bytes} bytes")
    size = content_bytes(content)
    if size > max_content_bytes:
        return Outcome.permanent(
            "content_too_large", f"rendered content is {size} bytes; the channel allows {max_content_bytes}"
        )
    return None


#: a check of rendered content, as rendered: the outcome that fails it, or None (links)
Screen = Callable[[Delivery], "Outcome | None"]
#: a change to rendered content once it passed the screen, before its size is checked
Finish = Callable[[ReachMessage, Rendered], Rendered]


def deliveries_for(
    messages: Sequence[ReachMessage],
    templates: Mapping[str, Template],
    max_content_bytes: int,
    screen: Screen | None = None,
    finish: Finish | None = None,
) -> tuple[list[Delivery], list[tuple[ReachMessage, Outcome]]]:
    """Split messages into deliveries and ones that failed to render, that ``screen`` refused,
    or that render too large.

    ``screen`` sees the content as the template rendered it, before anything changes it;
    ``finish`` then changes it (tracked links) before its size is checked. Content over
    ``max_content_bytes`` is never stored or sent: it fails as ``content_too_large``.
    """
    ready: list[Delivery] = []
    failed: list[tuple[ReachMessage, Outcome]] = []
    for message in messages:
        content = render(message, templates)
        if isinstance(content, Rendered):
            content = _screened(Delivery(message, content), screen) or content
        if isinstance(content, Rendered) and finish is not None:
            content = finish(message, content)
        if isinstance(content, Rendered):
            content = oversize(content, max_content_bytes) or content
        if isinstance(content, Outcome):
            failed.append((message, content))
        else:
            ready.append(Delivery(message, content))
    return ready, failed


def _screened(delivery: Delivery, screen: Screen | None) -> Outcome | None:
    return screen(delivery) if screen is not None else None
