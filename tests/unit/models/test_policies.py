"""The policies file: what it means, and every mistake refused with where it is."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from models.policies import Action, Cap, PolicyFileError, QuietHours, load_policies
from reach.settings import REPO_ROOT

CATEGORIES = ("transactional", "marketing", "notification")


def test_the_shipped_file_loads() -> None:
    policies = load_policies(REPO_ROOT / "deploy" / "config" / "policies.yaml", CATEGORIES)
    marketing = policies.of("marketing")
    assert marketing.caps == (Cap(3), Cap(1, "sms"))
    assert marketing.quiet_hours == (QuietHours(dt.time(21), dt.time(8), ("*",), Action.DEFER, 3_600_000),)
    assert policies.of("transactional").opt_out is False
    assert policies.bypass_priority == 9


def test_caps_take_a_day_or_a_rolling_window(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "categories:\n  marketing:\n    caps: [{limit: 2, per: 3600}, {limit: 5}]\n    over_cap: defer\n"
    )
    marketing = load_policies(path, CATEGORIES).of("marketing")
    assert marketing.caps == (Cap(2, "*", 3_600_000), Cap(5)) and marketing.over_cap is Action.DEFER
    assert [c.per_day for c in marketing.caps] == [False, True]
    assert load_policies(path, CATEGORIES).of("notification").caps == ()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("categories: {promo: {}}", "unknown category 'promo'"),
        ("categories: {marketing: {cap: []}}", "unknown keys ['cap']"),
        ("categories: {marketing: {caps: [{limit: -1}]}}", "'limit' must be an integer >= 0"),
        ("categories: {marketing: {caps: [{limit: 1, per: week}]}}", "'per'"),
        ("categories: {marketing: {over_cap: later}}", "must be suppress, drop or defer"),
        ("categories: {marketing: {quiet_hours: [{start: '25:00', end: '08:00'}]}}", "HH:MM"),
        ("categories: {marketing: {quiet_hours: [{start: '08:00', end: '08:00'}]}}", "same time"),
        ("bypass_priority: high", "'bypass_priority'"),
    ],
)
def test_mistakes_are_refused_with_the_file_and_reason(tmp_path: Path, body: str, reason: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(PolicyFileError, match=str(path)) as caught:
        load_policies(path, CATEGORIES)
    assert reason in str(caught.value)


def test_no_file_means_no_policy() -> None:
    assert load_policies(None, CATEGORIES).of("marketing").caps == ()


def test_the_default_category_must_be_one_of_the_categories() -> None:
    from pydantic import ValidationError

    from reach.settings import Settings

    assert Settings(categories="a, b", default_category="b").category_names == ("a", "b")
    with pytest.raises(ValidationError, match="REACH_DEFAULT_CATEGORY 'c'"):
        Settings(categories="a,b", default_category="c")
