"""Templates: sandboxed Jinja2, html-only autoescape, strict undefined, typed render errors."""

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


def test_defaults_tests_and_null_work_through_missing_objects() -> None:
    template = Template(
        "t",
        "Welcome, {{ properties.first_name | default('there') }}",
        "on {{ device.platform | default('the web') }}{{ properties.none }}"
        "{% if properties.coupon %} with {{ properties.coupon }}{% endif %}"
        "{{ '!' if properties.missing is not defined }}",
    )
    assert template.render({"properties": {"none": None}}) == Rendered("Welcome, there", "on the web!", "")


@pytest.mark.parametrize(
    ("text", "variable"),
    [
        ("Your payment of {{ properties.amount }} {{ properties.currency }}.", "properties.currency"),
        ("{{ coupon }}", "coupon"),
        ("{{ device.platform }}", "device"),  # no device at all: the first missing name
        ("{{ properties.order.lines[0].sku }}", "properties.order.lines.0.sku"),
        ("{{ properties.amount * properties.rate }}", "properties.rate"),
        ("{{ properties.amount > properties.limit }}", "properties.limit"),
        ("{% for tag in properties.tags %}{{ tag }}{% endfor %}", "properties.tags"),
        ("{{ properties.tags | length }}", "properties.tags"),
        ("{{ 'code ' ~ properties.code }}", "properties.code"),
    ],
)
def test_a_missing_variable_fails_naming_it_instead_of_leaving_a_gap(text: str, variable: str) -> None:
    template = Template("receipt", "title", text, f"<p>{text}</p>")
    context = {"properties": {"amount": 980, "order": {"lines": [{"qty": 1}]}}}
    with pytest.raises(TemplateRenderError) as caught:
        template.render(context)
    assert caught.value.missing_variable == variable
    assert caught.value.field == "text"
    assert str(caught.value) == f"template 'receipt' text: variable {variable!r} is missing"


def test_a_missing_variable_fails_in_html_too() -> None:
    template = Template("t", "title", "text", "<a href='{{ properties.url }}'>go</a>")
    with pytest.raises(TemplateRenderError) as caught:
        template.render({"properties": {}})
    assert (caught.value.field, caught.value.missing_variable) == ("html", "properties.url")


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
