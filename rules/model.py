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

DEFAULT_PRIORITY = 5  # 0 is the lowest priority, 9 the highest


@dataclasses.dataclass(frozen=True)
class TriggerRule:
    """When an event matches ``when``, reach the user with ``template`` on one of
    ``channels`` (preference order). ``source`` is ``file:line``."""

    id: str
    when: str
    template: str
    channels: tuple[str, ...]
    priority: int = DEFAULT_PRIORITY
    dedup_key: str = DEFAULT_DEDUP_KEY
    source: str = "<memory>"
    category: str = "notification"  # what policies (caps, quiet hours, opt-outs) apply to it
    condition: Condition = dataclasses.field(init=False, repr=False, compare=False)
    dedup: DedupKey = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "condition", compile_expression(self.when, TRIGGER_FACT))
        object.__setattr__(self, "dedup", parse_dedup_key(self.dedup_key, TRIGGER_FACT))

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


@dataclasses.dataclass(frozen=True)
class Template:
    """Message content; ``render`` fills it from a context (the event fact).
    ``source`` is ``file:line``."""

    id: str
    title: str
    text: str
    html: str = ""
    source: str = dataclasses.field(default="<memory>", compare=False)
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

    def summary(self) -> str:
        return (
            f"{len(self.triggers)} triggers, {len(self.channel_rules)} channel rules, "
            f"{len(self.templates)} templates"
        )
