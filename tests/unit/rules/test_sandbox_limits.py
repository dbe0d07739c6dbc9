"""The sandbox's ceiling: no template builds or renders more than MAX_RENDERED_CHARS,
and the check happens before the large value exists."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from rules.errors import TemplateRenderError
from rules.model import Template
from rules.templating import MAX_RENDERED_CHARS, RenderLimitError, compile_source, render_field

CONTEXT = {"user_id": "u-1", "properties": {"first_name": "Ada", "amount": 640}}
LIMIT = str(MAX_RENDERED_CHARS)


def render(source: str, html: bool = False) -> str:
    return render_field(compile_source(source, html=html), CONTEXT, "t", "text")


def refusal(source: str) -> TemplateRenderError:
    with pytest.raises(TemplateRenderError) as caught:
        render(source)
    return caught.value


HUGE = [
    ("{{ 'x' * 100000000 }}", "a repetition would be 100000000 characters"),
    ("{{ 100000000 * 'x' }}", "a repetition would be 100000000 characters"),
    ("{{ ['x'] * 100000000 }}", "a repetition"),
    ("{{ 10 ** 100000000 }}", "a power"),
    ("{{ '%100000000s' % 'x' }}", "a %-format width would be 100000000"),
    ("{{ '{:>100000000}'.format('x') }}", "a format width would be 100000000"),
    ("{{ 'x'.center(100000000) }}", "str.center() would be 100000000"),
    ("{{ 'x'.ljust(100000000) }}", "str.ljust() would be 100000000"),
    ("{{ 'x' | center(100000000) }}", "|center would be 100000000"),
    ("{{ 'x' | indent(100000000) }}", "|indent"),
    ("{{ ('x' * 1000) | replace('x', 'y' * 1000) }}", "a replace would be 1001000"),
    ("{{ ('x' * 1000).replace('x', 'y' * 1000) }}", "a replace would be 1001000"),
    ("{% set a = 'x' * 200000 %}{{ a ~ a }}", "a concatenation would be 400000"),
    ("{% set a = 'x' * 200000 %}{{ a + a }}", "a sum would be 400000"),
    ("{% set a = 'x' * 200000 %}{{ [a, a] | join }}", "a join"),
    ("{{ range(100000) | map('center', 200000) | join }}", "the items of |map"),
    ("{% set a = 'x' * 200000 %}{% for i in range(10) %}{{ a }}{% endfor %}", "the rendered text is over"),
]


@pytest.mark.parametrize(("source", "reason"), HUGE)
def test_huge_values_fail_fast_with_a_clear_reason(source: str, reason: str) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = refusal(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error.__cause__, RenderLimitError)
    assert reason in error.reason and LIMIT in error.reason
    assert peak < 4 * MAX_RENDERED_CHARS * 4  # never more than a few values at the ceiling
    assert time.perf_counter() - started < 2


def test_values_up_to_the_ceiling_render() -> None:
    assert render(f"{{{{ 'x' * {MAX_RENDERED_CHARS} }}}}") == "x" * MAX_RENDERED_CHARS
    assert render("{{ 'ab' * 3 }} {{ 2 ** 10 }} {{ '%5.1f' % 3.14159 }} {{ 'x'.center(5) }}|") == (
        "ababab 1024   3.1   x  |"
    )
    assert render("{{ [1, 2, 3] | join(', ') }} {{ 'a,b'.split(',') | join('-') }} {{ 'a' ~ user_id }}") == (
        "1, 2, 3 a-b au-1"
    )
    assert render("Hi {{ properties.first_name | default('there') }}, {{ properties.amount + 1 }}") == (
        "Hi Ada, 641"
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ ''.__class__ }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{{ properties.missing.__class__ }}", "access to attribute '__class__'"),
        ("{% set l = [] %}{{ l.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
    ],
)
def test_sandbox_violations_fail_instead_of_rendering_empty(source: str, reason: str) -> None:
    assert reason in refusal(source).reason


def test_a_template_over_the_ceiling_is_a_render_error_of_its_field() -> None:
    template = Template("big", "ok", "{{ 'x' * 100000000 }}", "{{ ''.__class__ }}")
    with pytest.raises(TemplateRenderError, match="template 'big' text: a repetition"):
        template.render(CONTEXT)
    assert [(e.field, type(e.__cause__).__name__) for e in template.render_errors(CONTEXT)] == [
        ("text", "RenderLimitError"),
        ("html", "SecurityError"),
    ]
