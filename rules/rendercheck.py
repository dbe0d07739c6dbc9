"""Render every template of a rule book against a sample event, before deploying.

Syntax errors are caught when a rule file loads; some problems only appear
when a template runs: a sandbox violation (``''.__class__``, ``list.append``)
or output over the sandbox's ceiling (``{{ 'x' * 100000000 }}``). The worker
would fail every message of such a template, so validation reports them as
``file:line: reason`` (the line of the template's id).

Only problems that do not depend on the event are reported. A missing variable
is not one: rules default optional fields, and the sample event cannot hold
every property a rule may read. Other runtime errors (a filter given a value of
the wrong type) depend on the event's data and are not reported either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from jinja2.sandbox import SecurityError

from rules.errors import RuleFileError, TemplateRenderError
from rules.model import Template

__all__ = ["SAMPLE_CONTEXT", "render_problems"]

# What agents/plan.py gives a template: the event's user_id, name, id, properties and device.
SAMPLE_CONTEXT: Mapping[str, Any] = MappingProxyType(
    {
        "user_id": "u-sample-1",
        "event": "order_paid",
        "event_id": "e-sample-1",
        "unsubscribe_url": "https://reach.example/v1/unsubscribe/sample",  # added at send time
        "properties": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "amount": 640.5,
            "currency": "EUR",
            "order_id": "o-1001",
            "item_count": 2,
            "items": [{"sku": "a-1", "qty": 2, "price": 320.25}],
            "cart_url": "https://shop.example/cart",
            "reset_url": "https://shop.example/reset?token=sample",
            "years": 3,
        },
        "device": {"platform": "ios", "app_version": "5.2.1", "locale": "en-GB"},
        # what a kind: upgrade template gets (agents/plan.py upgrade_of)
        "upgrade": {
            "platform": "ios",
            "minimum_version": "6.0.0",
            "upgrade_url": "https://apps.example/reach",
        },
    }
)


def render_problems(
    templates: Iterable[Template], context: Mapping[str, Any] = SAMPLE_CONTEXT
) -> list[RuleFileError]:
    """Every event-independent render failure of ``templates``, one per field."""
    return [
        _as_file_error(template, error)
        for template in templates
        for error in template.render_errors(context)
        if _reportable(error)
    ]


def _reportable(error: TemplateRenderError) -> bool:
    # RenderLimitError is a SecurityError; a missing variable (UndefinedError) is not one.
    return isinstance(error.__cause__, SecurityError)


def _as_file_error(template: Template, error: TemplateRenderError) -> RuleFileError:
    path, _, line = template.source.rpartition(":")
    if not path or not line.isdigit():
        return RuleFileError(template.source, None, str(error))
    return RuleFileError(path, int(line), str(error))
