"""The caps' pure parts: which caps a message falls under, windows and when a cap frees."""

from __future__ import annotations

import datetime as dt

from agents.delivery.caps import applicable, frees_at, window_start
from models.cap_counts import Verdict
from models.policies import Cap, CategoryPolicy, Policies
from tests.unit.agents.delivery.conftest import message


def utc_ms(*parts: int) -> int:
    return int(dt.datetime(*parts, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


DAILY, SMS_DAILY, HOURLY = Cap(3), Cap(1, "sms"), Cap(2, "*", 3_600_000)
POLICIES = Policies({"marketing": CategoryPolicy(caps=(DAILY, SMS_DAILY, HOURLY))}, bypass_priority=8)


def test_a_message_falls_under_its_channels_caps_and_the_cross_channel_ones() -> None:
    assert applicable(message(1, category="marketing"), POLICIES) == (DAILY, SMS_DAILY, HOURLY)
    assert applicable(message(1, category="marketing", channel="email"), POLICIES) == (DAILY, HOURLY)
    assert applicable(message(1, category="marketing", priority=8), POLICIES) == ()  # critical
    assert applicable(message(1, category="transactional"), POLICIES) == ()


def test_a_day_is_the_users_calendar_day_and_a_rolling_window_ends_now() -> None:
    now = utc_ms(2026, 6, 15, 13)  # 22:00 in Tokyo, 09:00 in New York
    assert window_start(DAILY, now, "Asia/Tokyo", "UTC") == utc_ms(2026, 6, 14, 15)
    assert window_start(DAILY, now, "America/New_York", "UTC") == utc_ms(2026, 6, 15, 4)
    assert window_start(DAILY, now, "", "UTC") == utc_ms(2026, 6, 15)
    assert window_start(HOURLY, now, "Asia/Tokyo", "UTC") == now - 3_600_000 + 1


def test_a_full_cap_frees_at_the_next_local_midnight_or_when_its_oldest_leaves() -> None:
    now = utc_ms(2026, 10, 31, 12)  # New York: the day before the clocks go back
    assert frees_at(DAILY, Verdict(1, 0), now, "America/New_York", "UTC") == utc_ms(2026, 11, 1, 4)
    long_day = utc_ms(2026, 11, 1, 12)  # 1 November is 25 hours long there
    assert frees_at(DAILY, Verdict(1, 0), long_day, "America/New_York", "UTC") == utc_ms(2026, 11, 2, 5)
    oldest = now - 600_000
    assert frees_at(HOURLY, Verdict(3, oldest), now, "UTC", "UTC") == oldest + 3_600_000
