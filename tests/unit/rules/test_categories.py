"""Trigger categories: named from the configured list, defaulted, refused when unknown."""

from __future__ import annotations

from pathlib import Path

import pytest

from rules.errors import RuleSetError
from rules.loader import Categories, load_rulebook
from tests.unit.rules.conftest import write

RULES = """
triggers:
  - {id: promo, when: 'name == "a"', template: t, channels: [inbox], category: marketing}
  - {id: plain, when: 'name == "b"', template: t, channels: [inbox]}
templates:
  t: {title: "T", text: "x"}
"""


def test_a_trigger_has_its_category_or_the_configured_default(rules_dir: Path) -> None:
    write(rules_dir, "r.yaml", RULES)
    book = load_rulebook(rules_dir, categories=Categories(("marketing", "alerts"), "alerts"))
    assert [t.category for t in book.triggers] == ["marketing", "alerts"]


def test_an_unknown_category_is_refused_with_its_line(rules_dir: Path) -> None:
    write(rules_dir, "r.yaml", RULES.replace("category: marketing", "category: promos"))
    with pytest.raises(RuleSetError) as caught:
        load_rulebook(rules_dir, categories=Categories(("marketing", "notification"), "notification"))
    [error] = caught.value.errors
    assert (error.line, error.reason) == (2, "unknown category 'promos' (known: marketing, notification)")
