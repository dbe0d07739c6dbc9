"""Immutable rule objects: triggers, channel rules, templates, and the rule book.

Constructing a :class:`TriggerRule` or :class:`ChannelRule` compiles its
``when`` expression (and dedup key) and raises
:class:`~rules.errors.ExpressionError` when it is refused; constructing a
:class:`Template` compiles its Jinja2 sources and raises
:class:`jinja2.TemplateSyntaxError`. The loader validates fields one by one
first, to report every problem with its file line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jinja2

from channels.base import Rendered
from rules.dedup import DEFAULT_DEDUP_KEY, DedupKey, parse_dedup_key
from rules.errors import TemplateRenderError
from rules.expr import CHANNEL_FACT, TRIGGER_FACT, Condition, compile_expression
from rules.templating import compile_source, render_field
from rules.versions import version_key

DEFAULT_PRIORITY = 5  # 0 is the lowest priority, 9 the highest


@dataclasses.dataclass(frozen=True)
class TriggerRule:
    """When an event matches ``when``, reach the user with ``template`` on one of
    ``channels`` (preference order). ``source`` is ``file:line``.

    With ``delay_ms`` the message is sent that long after the event was planned
    instead of at once; ``cancel_if`` (only with a delay) is matched against the
    user's later events, and one that matches drops the messages of this
    trigger still waiting for that user (:mod:`agents.cancels`).
    """

    id: str
    when: str
    template: str
    channels: tuple[str, ...]
    priority: int = DEFAULT_PRIORITY
    dedup_key: str = DEFAULT_DEDUP_KEY
    source: str = "<memory>"
    delay_ms: int = 0
    cancel_if: str = ""
    category: str = "notification"  # what policies (caps, quiet hours, opt-outs) apply to it
    condition: Condition = dataclasses.field(init=False, repr=False, compare=False)
    dedup: DedupKey = dataclasses.field(init=False, repr=False, compare=False)
    cancel_condition: Condition | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.cancel_if and self.delay_ms <= 0:
            raise ValueError(f"trigger {self.id!r}: cancel_if needs a delay")
        cancel = compile_expression(self.cancel_if, TRIGGER_FACT) if self.cancel_if else None
        object.__setattr__(self, "condition", compile_expression(self.when, TRIGGER_FACT))
        object.__setattr__(self, "dedup", parse_dedup_key(self.dedup_key, TRIGGER_FACT))
        object.__setattr__(self, "cancel_condition", cancel)

    def dedup_for(self, fact: Mapping[str, Any]) -> str:
        """The dedup key of the message this trigger makes from event ``fact``.

        Scoped by trigger: ``<trigger id>:<formatted key>``, so two triggers
        matching one event do not suppress each other. When a placeholder has
        no value in the event, the key falls back to
        ``<trigger id>:missing:<event_id>`` (one message per event) rather than
        collapsing every such event onto one key. Never raises.
        """
        key = self.dedup.format(fact)
        if key is None:
            return f"{self.id}:missing:{fact.get('event_id', '')}"
        return f"{self.id}:{key}"


@dataclasses.dataclass(frozen=True)
class ChannelRule:
    """When a reach message matches ``when``, send it only on the candidate
    channels that are also in ``use``."""

    id: str
    when: str
    use: tuple[str, ...]
    source: str = "<memory>"
    condition: Condition = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition", compile_expression(self.when, CHANNEL_FACT))


#: a template's ``fallback`` meaning "older apps get nothing" (recorded as ``app_version_too_old``)
SKIP = "skip"
#: fallbacks followed at most (the loader refuses loops; this bounds a hand-built mapping)
MAX_FALLBACKS = 16
#: a template's ``kind`` for a pop-up asking the user to upgrade the app
UPGRADE = "upgrade"
KINDS = ("", UPGRADE)


@dataclasses.dataclass(frozen=True)
class Template:
    """Message content; ``render`` fills it from a context (the event fact).
    ``source`` is ``file:line``.

    ``min_app_version``: the oldest app version that can show it; older apps get the
    ``fallback`` template instead, or nothing when it is ``skip``, or this content (or
    the ``fallback`` template, when named) on ``fallback_channel`` (see :func:`content_for`).

    ``kind`` ``upgrade``: a pop-up asking the user to upgrade to ``minimum_version`` at
    ``upgrade_url``; either left empty is the platform's ``REACH_MIN_APP_VERSIONS`` /
    ``REACH_UPGRADE_URLS`` entry, the platform being ``platform`` or the app's.
    """

    id: str
    title: str
    text: str
    html: str = ""
    source: str = dataclasses.field(default="<memory>", compare=False)
    min_app_version: str = ""
    fallback: str = ""
    #: false: its messages get no tracked links and no open pixel (a password reset link
    #: must not pass through a redirect, nor its secret sit in reach's tracking token)
    tracking: bool = True
    fallback_channel: str = ""
    kind: str = ""
    minimum_version: str = ""
    upgrade_url: str = ""
    platform: str = ""
    _compiled: tuple[jinja2.Template, jinja2.Template, jinja2.Template | None] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        compiled = (
            compile_source(self.title, html=False),
            compile_source(self.text, html=False),
            compile_source(self.html, html=True) if self.html else None,
        )
        object.__setattr__(self, "_compiled", compiled)

    def render_errors(self, context: Mapping[str, Any]) -> list[TemplateRenderError]:
        """Render every field on its own; the error of each field that fails."""
        errors: list[TemplateRenderError] = []
        for field, compiled in zip(("title", "text", "html"), self._compiled, strict=True):
            if compiled is None:
                continue
            try:
                render_field(compiled, context, self.id, field)
            except TemplateRenderError as exc:
                errors.append(exc)
        return errors

    def render(self, context: Mapping[str, Any]) -> Rendered:
        """Render all fields; raises :class:`~rules.errors.TemplateRenderError`."""
        title, text, html = self._compiled
        return Rendered(
            title=render_field(title, context, self.id, "title"),
            text=render_field(text, context, self.id, "text"),
            html=render_field(html, context, self.id, "html") if html is not None else "",
            tracking=self.tracking,
        )


@dataclasses.dataclass(frozen=True, eq=False)
class RuleBook:
    """Everything loaded from one rule directory, in file order.

    ``fingerprint`` is a SHA-256 over file names and contents: equal
    fingerprints mean equal rules (log it to tell which rules a worker runs).
    """

    triggers: tuple[TriggerRule, ...]
    channel_rules: tuple[ChannelRule, ...]
    templates: Mapping[str, Template]
    fingerprint: str
    files: tuple[str, ...]

    @property
    def cancelling(self) -> tuple[TriggerRule, ...]:
        """The triggers with a ``cancel_if``, in file order."""
        return tuple(t for t in self.triggers if t.cancel_condition is not None)

    def summary(self) -> str:
        return (
            f"{len(self.triggers)} triggers, {len(self.channel_rules)} channel rules, "
            f"{len(self.templates)} templates"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ContentChoice:
    """What an app gets of a template: ``template`` to render, or None and ``reason``.

    ``fallback`` names the fallback taken (``""`` none, ``template``, ``skip``, ``channel``);
    for ``channel``, the content is ``template`` sent on ``channel`` instead.
    """

    template: Template | None
    reason: str = ""
    fallback: str = ""
    channel: str = ""


def content_for(
    templates: Mapping[str, Template], template_id: str, app_version: object, channel: str = ""
) -> ContentChoice:
    """The template to render on ``channel`` for an app at ``app_version``.

    Follows ``fallback`` while the app is below a template's ``min_app_version`` (the
    loader refuses loops). An unknown or unreadable version shows the template as it is:
    nothing says the app cannot. On the channel a template falls back to, it is shown as
    it is. Reasons: ``unknown_template`` for a missing id, ``app_version_too_old`` when a
    fallback is ``skip``, ``app_version_fallback`` for a fallback to another channel.
    """
    version = version_key(app_version)
    current, taken = templates.get(template_id), ""
    for _ in range(MAX_FALLBACKS + 1):
        if current is None:
            return ContentChoice(None, "unknown_template", taken)
        minimum = version_key(current.min_app_version) if current.min_app_version else None
        if version is None or minimum is None or version >= minimum or _lands_on(current, channel):
            return ContentChoice(current, "", taken)
        if current.fallback_channel:
            target = templates.get(current.fallback) if current.fallback else current
            return ContentChoice(target, "app_version_fallback", "channel", current.fallback_channel)
        if current.fallback == SKIP:
            return ContentChoice(None, "app_version_too_old", "skip")
        current, taken = templates.get(current.fallback), "template"
    return ContentChoice(None, "unknown_template", taken)


def fallback_channels(templates: Mapping[str, Template], template_id: str) -> tuple[str, ...]:
    """The channels an app too old for ``template_id`` may get its content on instead (along
    its chain of template fallbacks): a message carries their contact fields too."""
    channels: list[str] = []
    current = templates.get(template_id)
    for _ in range(MAX_FALLBACKS + 1):
        if current is None or not current.min_app_version:
            break
        if current.fallback_channel:
            channels.append(current.fallback_channel)
            break
        current = templates.get(current.fallback)
    return tuple(channels)


def _lands_on(template: Template, channel: str) -> bool:
    """Whether ``channel`` is the one ``template`` falls back to: there it is shown as it is."""
    return bool(template.fallback_channel) and template.fallback_channel == channel
