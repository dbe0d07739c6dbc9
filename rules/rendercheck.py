"""Render every template of a rule book against a sample event, before deploying.

Syntax errors are caught when a rule file loads; some problems only appear
when a template runs: a sandbox violation (``''.__class__``, ``list.append``)
or output over the sandbox's ceiling (``{{ 'x' * 100000000 }}``). The worker
would fail every message of such a template, so validation reports them as
``file:line: reason`` (the line of the template's id).

Only problems that do not depend on the event are reported. A missing variable
is not one: the sample event cannot hold every property a rule may read, so a
variable it lacks is filled with an empty, lenient value and the field rendered
again, which lets a sandbox violation after it still be found (whether the
trigger guarantees a variable is :mod:`rules.variables`' question). Other
runtime errors (a filter given a value of the wrong type) depend on the event's
data and are not reported either.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import jinja2
from jinja2.sandbox import SecurityError
from jinja2.utils import missing

from rules.errors import RuleFileError, TemplateRenderError
from rules.model import Template
from rules.templating import MissingVariableError

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
        for error in _errors_past_missing(template, context)
        if _reportable(error)
    ]


#: missing variables filled in per template before giving up on finding more
MAX_FILLS = 64


def _errors_past_missing(template: Template, context: Mapping[str, Any]) -> list[TemplateRenderError]:
    """The template's render errors once every variable the sample lacks is filled in."""
    sample = _plain(context)
    for _ in range(MAX_FILLS):
        errors = template.render_errors(sample)
        missing_ones = [e.__cause__ for e in errors if isinstance(e.__cause__, MissingVariableError)]
        if not missing_ones or not all(_fill(sample, cause) for cause in missing_ones):
            return errors
    return template.render_errors(sample)


def _plain(value: Any) -> Any:
    """A mutable deep copy (mapping proxies become dicts), so missing variables can be added."""
    if isinstance(value, Mapping):
        return {key: _plain(child) for key, child in value.items()}
    return copy.deepcopy(value)


def _fill(sample: dict[str, Any], cause: MissingVariableError) -> bool:
    """Put an empty, lenient value where ``cause`` found nothing; False when it cannot be placed."""
    owner = sample if cause.owner is missing else cause.owner
    if not isinstance(owner, dict) or not isinstance(cause.variable, str) or cause.variable in owner:
        return False
    owner[cause.variable] = jinja2.ChainableUndefined(name=cause.variable)
    return True


def _reportable(error: TemplateRenderError) -> bool:
    # RenderLimitError is a SecurityError; a missing variable (UndefinedError) is not one.
    return isinstance(error.__cause__, SecurityError)


def _as_file_error(template: Template, error: TemplateRenderError) -> RuleFileError:
    path, _, line = template.source.rpartition(":")
    if not path or not line.isdigit():
        return RuleFileError(template.source, None, str(error))
    return RuleFileError(path, int(line), str(error))
