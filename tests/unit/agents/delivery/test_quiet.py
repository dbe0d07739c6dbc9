"""Quiet hours in the user's zone: three zones at one instant, DST changes, defer or drop, bypass."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry

from agents.delivery.batch import BatchOutcome
from agents.delivery.hold import Holds
from agents.delivery.quiet import Quiet, held_by, quiet_until
from models.messages import DeliveryStatus, ReachMessage
from models.policies import Action, CategoryPolicy, Policies, QuietHours
from reach.clock import ManualClock
from reach.metrics import WorkerMetrics
from tests.unit.agents.delivery.conftest import counted, message

NIGHT = QuietHours(dt.time(21), dt.time(8))


def utc_ms(*parts: int) -> int:
    return int(dt.datetime(*parts, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


def policies(*quiet: QuietHours, bypass: int = 9) -> Policies:
    return Policies({"marketing": CategoryPolicy(quiet_hours=quiet)}, bypass)


def test_one_instant_is_night_in_tokyo_and_los_angeles_and_day_in_london() -> None:
    now = utc_ms(2026, 6, 15, 13)  # Tokyo 22:00, London 14:00 (BST), Los Angeles 06:00 (PDT)
    assert quiet_until(now, ZoneInfo("Asia/Tokyo"), NIGHT) == utc_ms(2026, 6, 15, 23)  # 08:00 JST
    assert quiet_until(now, ZoneInfo("Europe/London"), NIGHT) is None
    assert quiet_until(now, ZoneInfo("America/Los_Angeles"), NIGHT) == utc_ms(2026, 6, 15, 15)  # 08:00 PDT


def test_the_night_the_clocks_go_back_ends_at_eight_local_eleven_hours_later() -> None:
    now = utc_ms(2026, 11, 1, 2)  # 22:00 EDT on 31 October; at 02:00 the clocks go back to 01:00 EST
    until = quiet_until(now, ZoneInfo("America/New_York"), NIGHT)
    assert until == utc_ms(2026, 11, 1, 13)  # 08:00 EST
    assert until is not None and until - now == 11 * 3_600_000


def test_the_night_the_clocks_go_forward_is_an_hour_shorter() -> None:
    now = utc_ms(2026, 3, 28, 21)  # 22:00 CET; at 02:00 the clocks jump to 03:00 CEST
    assert quiet_until(now, ZoneInfo("Europe/Berlin"), NIGHT) == utc_ms(2026, 3, 29, 6)  # 08:00 CEST


def test_a_daytime_period_and_its_edges() -> None:
    lunch = QuietHours(dt.time(12), dt.time(13, 30))
    zone = ZoneInfo("UTC")
    assert quiet_until(utc_ms(2026, 1, 5, 12), zone, lunch) == utc_ms(2026, 1, 5, 13, 30)
    assert quiet_until(utc_ms(2026, 1, 5, 13, 30), zone, lunch) is None
    assert quiet_until(utc_ms(2026, 1, 5, 11, 59), zone, lunch) is None
    assert quiet_until(utc_ms(2026, 1, 5, 8), zone, NIGHT) is None  # the night's end is not quiet
    assert quiet_until(utc_ms(2026, 1, 5, 7, 59), zone, NIGHT) == utc_ms(2026, 1, 5, 8)


def marketing(n: int, zone: str, **changes: object) -> ReachMessage:
    return message(n, category="marketing", timezone=zone, **changes)  # type: ignore[arg-type]


def test_critical_messages_other_channels_and_categories_are_not_held() -> None:
    sms_only = policies(QuietHours(dt.time(21), dt.time(8), ("sms",)))
    night = utc_ms(2026, 1, 5, 23)
    assert held_by(marketing(1, "UTC"), sms_only, night, "UTC") is not None
    assert held_by(marketing(1, "UTC", channel="email"), sms_only, night, "UTC") is None
    assert held_by(marketing(1, "UTC", priority=9), sms_only, night, "UTC") is None
    assert held_by(message(1, timezone="UTC"), sms_only, night, "UTC") is None  # no category policy
    # an unknown or missing zone is measured in the default zone
    assert held_by(marketing(1, "Mars/Olympus"), sms_only, night, "Asia/Tokyo") is None  # 08:00 in Tokyo


def test_deferred_over_the_spread_then_sent_once_the_clock_reaches_it() -> None:
    registry = CollectorRegistry()
    holds = Holds("sms", WorkerMetrics(registry), ["marketing"])
    spread = QuietHours(dt.time(21), dt.time(8), action=Action.DEFER, spread_ms=3_600_000)
    step = Quiet(policies(spread), holds, "UTC")
    clock = ManualClock(utc_ms(2026, 11, 1, 2))  # 22:00 in New York, the night the clocks go back
    users = [marketing(n, "America/New_York") for n in range(20)]
    batch = BatchOutcome()
    assert step.screen(users, clock.now_ms(), batch) == []
    times = sorted(when for when, _ in batch.deferred)
    end = utc_ms(2026, 11, 1, 13)
    assert end <= times[0] and times[-1] < end + 3_600_000 and len(set(times)) > 10
    assert counted(registry, "reach_messages_held", reason="quiet_hours", action="deferred",
                   channel="sms", category="marketing") == 20  # fmt: skip
    clock.advance(times[-1] - clock.now_ms())
    again = [ReachMessage.from_bytes(payload) for _, payload in batch.deferred]
    assert len(step.screen(again, clock.now_ms(), BatchOutcome())) == 20


def test_a_drop_policy_suppresses_with_a_result_row() -> None:
    holds = Holds("sms", WorkerMetrics(CollectorRegistry()), ["marketing"])
    step = Quiet(policies(QuietHours(dt.time(21), dt.time(8), action=Action.SUPPRESS)), holds, "UTC")
    batch = BatchOutcome()
    assert step.screen([marketing(1, "UTC")], utc_ms(2026, 1, 5, 23), batch) == []
    [row] = batch.results
    assert (row.status, row.error_code) == (DeliveryStatus.SUPPRESSED, "quiet_hours")
    assert batch.done_ids == ["m-1"] and batch.deferred == []
