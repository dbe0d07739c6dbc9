"""Pure decisions of the pipeline: event -> reach messages, outcome -> result.

Nothing here does I/O; the agents call these functions and do the sending.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from channels.base import Delivery, Outcome, OutcomeKind, Rendered
from channels.routing import WeightedChooser
from models.events import Event
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage, message_id_for
from models.profiles import SeenVersion, UserProfile, app_version_for, platform_name
from models.upgrades import UpgradeTarget, upgrade_details
from rules.engine import RuleEngine
from rules.errors import TemplateRenderError
from rules.model import UPGRADE, Template, content_for, fallback_channels

#: (platform, app version) of the app a message's content is chosen for; "" when unknown
App = tuple[str, str]


def trigger_fact(event: Event, profile: UserProfile | None) -> dict[str, Any]:
    """What trigger rules match: the event, the profile's ``segments`` and ``app_version``
    (``{platform: version}``), and ``device.app_version`` from the profile when the event
    says none (see :func:`event_app`)."""
    fact = event.as_dict()
    fact["segments"] = list(profile.segments) if profile else []
    if profile is not None and profile.app_versions:
        fact["app_version"] = profile.latest_versions()
        if not _reported_version(event):
            _, version = event_app(event, profile)
            if version:
                fact["device"] = {**event.device, "app_version": version}
    return fact


def event_app(event: Event, profile: UserProfile | None) -> App:
    """The app an event came from: its platform and ``device.app_version``; when it says no
    version, the one the profile last saw on the event's platform, or on the most recently
    seen platform when the event names none."""
    platform, version = platform_name(event.platform), _reported_version(event)
    if version or profile is None:
        return platform, version
    return app_version_for(profile.app_versions, platform)


def app_on_channel(event: App, versions: Mapping[str, SeenVersion], channel_platform: str) -> App:
    """The app a channel's message is shown by: on a channel of one platform (an APNs push
    is shown by the iOS app), the profile's app of that platform unless the event came from
    it; on any other channel (inbox, pop-ups) the event's app."""
    if not channel_platform or channel_platform == event[0]:
        return event
    return app_version_for(versions, channel_platform)


def _reported_version(event: Event) -> str:
    version = event.device.get("app_version")
    return version if isinstance(version, str) else ""


def carried_contact(
    choosers: Mapping[str, WeightedChooser],
    channel: str,
    contact: Mapping[str, str],
    also: Iterable[str] = (),
) -> dict[str, str]:
    """The contact fields a message of ``channel`` carries: its providers', and those of the
    channels ``also`` its template may fall back to for an old app (an SMS instead of a pop-up
    needs the phone number)."""
    carried = choosers[channel].contact_for(contact)
    for other in also:
        if other in choosers:
            carried.update(choosers[other].contact_for(contact))
    return carried


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
    platforms: Mapping[str, str] | None = None,
) -> EventPlan:
    """The messages an event causes, one per matching trigger and selected channel, and
    the triggers it cancels. A trigger with a ``delay`` makes messages due that long
    after ``now_ms`` (``due_ts`` and ``not_before``).

    A selected channel with no provider that can address the user (SMS for a
    user without a phone number) yields no message; ``unroutable(rule_id,
    channel)`` is told, so the agent can count it. ``ingested_ms`` is when reach took the
    event in (its record's time on the events topic), carried for the end-to-end latency.
    ``unmatched()`` is told when no trigger rule matches the event. ``platforms`` names
    the channels bound to one platform's app (a push channel): their content is chosen for
    that app's version (:func:`app_on_channel`).
    """
    fact = trigger_fact(event, profile)
    source = event_app(event, profile)
    versions = profile.app_versions if profile else {}
    platforms = platforms or {}
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
        also = fallback_channels(engine.rulebook.templates, rule.template)
        due = now_ms + rule.delay_ms if rule.delay_ms else 0
        for channel in engine.select_channels(rule.channels, selection_fact):
            if channel not in reachable:
                if unroutable is not None:
                    unroutable(rule.id, channel)
                continue
            app_platform, app_version = app_on_channel(source, versions, platforms.get(channel, ""))
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
                    variables=_variables(event, fact["device"]),
                    contact=carried_contact(choosers, channel, contact, also),
                    platform=event.platform,
                    ingested_ts=ingested_ms,
                    not_before=due,
                    due_ts=due,
                    cancellable=rule.cancel_condition is not None,
                    category=rule.category,
                    timezone=timezone,
                    app_version=app_version,
                    app_platform=app_platform,
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


def _variables(event: Event, device: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "user_id": event.user_id,
        "event": event.name,
        "event_id": event.event_id,
        "properties": event.properties,
        "device": device,
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Moved:
    """A message whose app is too old for its content on this channel: ``template`` is to
    be sent on ``channel`` instead (the template's ``fallback: {channel: ...}``)."""

    message: ReachMessage
    channel: str
    template: str


def render(
    message: ReachMessage,
    templates: Mapping[str, Template],
    upgrades: Mapping[str, UpgradeTarget] | None = None,
) -> Rendered | Outcome | Moved:
    """The message's content, a permanent outcome saying why it cannot be rendered, or
    where it moves to (see :func:`render_choice`)."""
    return render_choice(message, templates, upgrades)[0]


def render_choice(
    message: ReachMessage,
    templates: Mapping[str, Template],
    upgrades: Mapping[str, UpgradeTarget] | None = None,
) -> tuple[Rendered | Outcome | Moved, str]:
    """The message's content (or why there is none, or where it moves to), and the
    app-version fallback taken: ``""``, ``template``, ``skip`` or ``channel``.

    The template is chosen for the message's app version (:func:`app_version_of`): an app
    below a template's ``min_app_version`` gets its fallback, nothing
    (``app_version_too_old``), or the content on another channel. A message that moved
    once does not move again: there it is ``app_version_too_old`` too. An ``upgrade``
    template's context has ``upgrade`` (see :func:`upgrade_of`). A render that fails is
    ``template_variable_missing`` (naming the variable) when the message lacks a variable
    its template prints, ``template_error`` for any other failure.
    """
    choice = content_for(templates, message.template, app_version_of(message), message.channel)
    if choice.template is not None and choice.channel and not message.fallback_from:
        return Moved(message, choice.channel, choice.template.id), choice.fallback
    if choice.template is None:
        why = Outcome.permanent(
            choice.reason, _WHY_NOT_RENDERED[choice.reason].format(template=message.template)
        )
        return why, choice.fallback
    if choice.channel:  # it moved here already: once is all
        detail = (
            f"the app is too old for template {message.template!r}, here and on {message.fallback_from!r}"
        )
        return Outcome.permanent("app_version_too_old", detail), "skip"
    return _filled(message, choice.template, upgrades or {}), choice.fallback


def _filled(
    message: ReachMessage, template: Template, upgrades: Mapping[str, UpgradeTarget]
) -> Rendered | Outcome:
    context, details = message.variables, {}
    if template.kind == UPGRADE:
        details = upgrade_of(template, message, upgrades)
        context = {**context, "upgrade": details}
    try:
        rendered = template.render(context)
    except TemplateRenderError as exc:
        code = "template_variable_missing" if exc.missing_variable else "template_error"
        return Outcome.permanent(code, str(exc)[:300])
    except Exception as exc:  # a template bug must fail this message, not the batch
        return Outcome.permanent("template_error", f"{type(exc).__name__}: {exc}"[:300])
    return dataclasses.replace(rendered, kind=template.kind, details=details) if template.kind else rendered


def upgrade_of(
    template: Template, message: ReachMessage, upgrades: Mapping[str, UpgradeTarget]
) -> dict[str, str]:
    """What an upgrade pop-up names: the template's platform (else the message's app's),
    and its minimum version and URL, else that platform's configured ones."""
    platform = template.platform or message.app_platform or platform_name(message.platform)
    return upgrade_details(upgrades, platform, template.minimum_version, template.upgrade_url)


_WHY_NOT_RENDERED = {
    "unknown_template": "template {template!r} is not loaded",
    "app_version_too_old": "the app is older than template {template!r} needs; its fallback is skip",
}


def app_version_of(message: ReachMessage) -> object:
    """The app version the message's content is chosen for: the one planned with it, else
    (messages planned before that field) the event's ``device.app_version``; None when unknown."""
    if message.app_version:
        return message.app_version
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


@dataclasses.dataclass
class Prepared:
    """A batch's messages after rendering: ready to send, failed, moved to another channel,
    and how many of each app-version fallback were taken."""

    ready: list[Delivery] = dataclasses.field(default_factory=list)
    failed: list[tuple[ReachMessage, Outcome]] = dataclasses.field(default_factory=list)
    moved: list[Moved] = dataclasses.field(default_factory=list)
    fallbacks: dict[str, int] = dataclasses.field(default_factory=dict)


def deliveries_for(
    messages: Sequence[ReachMessage],
    templates: Mapping[str, Template],
    max_content_bytes: int,
    screen: Screen | None = None,
    finish: Finish | None = None,
    upgrades: Mapping[str, UpgradeTarget] | None = None,
) -> Prepared:
    """Split messages into deliveries, ones that failed to render, that ``screen`` refused,
    or that render too large, and ones that move to another channel.

    ``screen`` sees the content as the template rendered it, before anything changes it;
    ``finish`` then changes it (tracked links) before its size is checked. Content over
    ``max_content_bytes`` is never stored or sent: it fails as ``content_too_large``.
    """
    prepared = Prepared()
    for message in messages:
        content, fallback = render_choice(message, templates, upgrades)
        if fallback:
            prepared.fallbacks[fallback] = prepared.fallbacks.get(fallback, 0) + 1
        if isinstance(content, Rendered):
            content = _screened(Delivery(message, content), screen) or content
        if isinstance(content, Rendered) and finish is not None:
            content = finish(message, content)
        if isinstance(content, Rendered):
            content = oversize(content, max_content_bytes) or content
        if isinstance(content, Moved):
            prepared.moved.append(content)
        elif isinstance(content, Outcome):
            prepared.failed.append((message, content))
        else:
            prepared.ready.append(Delivery(message, content))
    return prepared


def _screened(delivery: Delivery, screen: Screen | None) -> Outcome | None:
    return screen(delivery) if screen is not None else None
