"""Templates: sandboxed Jinja2, html-only autoescape, lenient undefined, typed render errors."""

from __future__ import annotations

import jinja2
import pytest

from channels.base import Rendered
from rules.errors import TemplateRenderError
from rules.model import Template


def test_render_fills_title_text_and_html() -> None:
    template = Template(
        "welcome", "Hi {{ properties.first_name }}", "On {{ device.platform }}", "<p>{{ user_id }}</p>"
    )
    context = {"user_id": "u-1", "properties": {"first_name": "Ada"}, "device": {"platform": "ios"}}
    assert template.render(context) == Rendered("Hi Ada", "On ios", "<p>u-1</p>")


def test_only_html_is_escaped() -> None:
    template = Template("t", "{{ properties.name }}", "{{ properties.name }}", "<b>{{ properties.name }}</b>")
    rendered = template.render({"properties": {"name": "Tom & <Jerry>"}})
    assert rendered.title == "Tom & <Jerry>"
    assert rendered.text == "Tom & <Jerry>"
    assert rendered.html == "<b>Tom &amp; &lt;Jerry&gt;</b>"


def test_missing_values_render_empty_and_defaults_work_through_missing_objects() -> None:
    template = Template(
        "t",
        "Welcome, {{ properties.first_name | default('there') }}",
        "on {{ device.platform | default('the web') }}{{ properties.missing }}{{ properties.none }}",
    )
    assert template.render({"properties": {"none": None}}) == Rendered("Welcome, there", "on the web", "")


def test_no_html_means_empty_html() -> None:
    assert Template("t", "a", "b").render({}).html == ""


def test_syntax_errors_are_raised_at_construction() -> None:
    with pytest.raises(jinja2.TemplateSyntaxError) as caught:
        Template("t", "ok", "line one\n{{ broken ")
    assert caught.value.lineno == 2
    with pytest.raises(jinja2.TemplateSyntaxError, match="No filter named 'nope'"):
        Template("t", "{{ user_id | nope }}", "ok")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{{ properties.amount / 0 }}", "ZeroDivisionError"),
        ("{{ properties.name.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{{ range(100000000) | list }}", "Range too big"),
        ("{{ properties.amount | first }}", "TypeError"),
    ],
)
def test_render_errors_are_typed(text: str, reason: str) -> None:
    template = Template("t", "title", text)
    with pytest.raises(TemplateRenderError) as caught:
        template.render({"properties": {"amount": 5, "name": "x"}})
    assert caught.value.template_id == "t"
    assert caught.value.field == "text"
    assert reason in caught.value.reason
