"""Durations of a trigger's `delay`: units required, largest first, never zero."""

from __future__ import annotations

import pytest

from rules.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30s", 30_000),
        ("30m", 1_800_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1h30m", 5_400_000),
        ("1d2h3m4s", 93_784_000),
        (" 5m ", 300_000),
        ("90s", 90_000),
    ],
)
def test_durations_in_units(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (30, "must be a duration with a unit (30s, 30m, 2h, 1d or 1h30m), got 30"),
        (1.5, "must be a duration with a unit (30s, 30m, 2h, 1d or 1h30m), got 1.5"),
        (None, "must be a duration with a unit (30s, 30m, 2h, 1d or 1h30m), got None"),
        ("30", "'30' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("30y", "'30y' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("", "'' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("-5m", "'-5m' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("1.5h", "'1.5h' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("5 m", "'5 m' is not a duration (30s, 30m, 2h, 1d or 1h30m)"),
        ("30m1h", "'30m1h': give each unit once, largest first (e.g. 1h30m)"),
        ("1m1m", "'1m1m': give each unit once, largest first (e.g. 1h30m)"),
        ("0s", "must be longer than zero, got '0s'"),
        ("0h0m", "must be longer than zero, got '0h0m'"),
    ],
)
def test_what_is_not_a_duration_says_why(value: object, reason: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("ms", "text"),
    [(1_800_000, "30m"), (604_800_000, "7d"), (5_400_000, "1h30m"), (1_500, "1s"), (20, "20ms")],
)
def test_durations_print_in_their_largest_units(ms: int, text: str) -> None:
    assert format_duration(ms) == text
