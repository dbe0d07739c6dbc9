"""Jinja2 set-up for message templates: sandboxed, compiled at load time.

Two sandboxed environments: ``title`` and ``text`` are plain text (no
escaping), ``html`` is autoescaped. Undefined values render as empty strings
and chain (``{{ device.platform | default('the web') }}`` works when the event
has no ``device`` at all), and ``None`` renders as an empty string, because
event properties are optional by nature. Syntax errors are found when the rule
file is loaded, never at send time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from rules.errors import TemplateRenderError


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _environment(autoescape: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        autoescape=autoescape,
        undefined=jinja2.ChainableUndefined,
        finalize=_finalize,
        keep_trailing_newline=False,
    )


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


def compile_source(source: str, html: bool) -> jinja2.Template:
    """Compile one template field; raises :class:`jinja2.TemplateSyntaxError`
    (with ``lineno`` relative to ``source``)."""
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


def render_field(template: jinja2.Template, context: Mapping[str, Any], template_id: str, field: str) -> str:
    """Render one compiled field; any failure becomes :class:`TemplateRenderError`."""
    try:
        return template.render(context)
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(template_id, field, exc.message or type(exc).__name__) from exc
    except Exception as exc:  # template code is author input: any error is a bad template
        raise TemplateRenderError(template_id, field, f"{type(exc).__name__}: {exc}") from exc
