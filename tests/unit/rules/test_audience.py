"""Audience filters: the rules' expression language over profiles, with its semantics."""

from __future__ import annotations

import pytest

from rules.audience import AudienceFilter
from rules.errors import ExpressionError

PROFILE = {
    "user_id": "u-1",
    "timezone": "Europe/Berlin",
    "segments": ["vip", "beta"],
    "attributes": {"country": "DE", "age": 41, "score": 2.5, "opted_in": True, "plan": {"tier": "pro"}},
    "app_version": {"ios": "1.10.0", "android": "junk"},
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('attributes.country == "DE"', True),
        ('attributes.country != "DE"', False),
        ("attributes.age >= 41 and attributes.age < 42", True),
        ("attributes.score > 2", True),  # a float against an int literal: numbers
        ("attributes.age > 40.5", True),
        ('attributes.age == "41"', False),  # another type: false, not coerced
        ("attributes.opted_in == true", True),
        ("attributes.opted_in == 1", False),  # booleans only equal booleans
        ('attributes.missing == "x"', False),
        ('attributes.missing != "x"', True),
        ('"vip" in segments and not ("gold" in segments)', True),
        ('attributes.country in ["FR", "DE"]', True),
        ('attributes.plan.tier == "pro" or timezone == "UTC"', True),
        ('user_id == "u-2"', False),
        ('version(app_version.ios) > version("1.9.0")', True),  # semantic: 1.10 above 1.9
        ('version(app_version.ios) < version("1.9.0")', False),
        ('version(app_version.ios) == version("1.10")', True),
        ('version(app_version.android) < version("9.0")', False),  # not a version: false
        ('version(app_version.web) < version("9.0")', False),  # never seen: false
        ('not (version(app_version.web) >= version("1.9.0"))', True),
        ("has(attributes.plan.tier) and not has(attributes.missing)", True),
        ("has(attributes.missing)", False),
    ],
)
def test_filter_semantics(source: str, expected: bool) -> None:
    assert AudienceFilter(source).matches(PROFILE) is expected


def test_a_filter_on_a_profile_without_attributes_is_false_not_an_error() -> None:
    assert AudienceFilter('attributes.country == "DE"').matches({"user_id": "u", "segments": []}) is False


@pytest.mark.parametrize("source", ["attributes.x ==", "name == 'x'", "attributes == 1", "segments == 'a'"])
def test_bad_filters_are_refused_with_the_languages_messages(source: str) -> None:
    with pytest.raises(ExpressionError):
        AudienceFilter(source)
