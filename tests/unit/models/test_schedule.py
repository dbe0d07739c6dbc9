"""Due times of tasks: local wall-clock time per zone across DST changes, parts, cron."""

from __future__ import annotations

import datetime as dt

import pytest

from models import schedule as sched


def utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("date", "wall", "zone", "expected"),
    [
        ("2026-03-07", "09:00", "America/New_York", "2026-03-07T14:00:00"),  # EST, the day before
        ("2026-03-08", "09:00", "America/New_York", "2026-03-08T13:00:00"),  # EDT from 02:00 that day
        ("2026-03-08", "02:30", "America/New_York", "2026-03-08T07:30:00"),  # skipped: 03:30 EDT
        ("2026-11-01", "01:30", "America/New_York", "2026-11-01T05:30:00"),  # twice: the first (EDT)
        ("2026-03-29", "09:00", "Europe/Berlin", "2026-03-29T07:00:00"),  # CEST from that morning
        ("2026-03-28", "09:00", "Europe/Berlin", "2026-03-28T08:00:00"),
        ("2026-03-08", "09:00", "Asia/Kathmandu", "2026-03-08T03:15:00"),  # UTC+05:45
    ],
)
def test_local_instant_follows_each_zones_rules(date: str, wall: str, zone: str, expected: str) -> None:
    got = sched.local_instant(dt.date.fromisoformat(date), dt.time.fromisoformat(wall), zone)
    assert got == utc(expected)


def test_parts_are_the_distinct_instants_and_each_zone_falls_in_its_own() -> None:
    date, wall = dt.date(2026, 3, 8), dt.time(9)
    zones = ["Asia/Tokyo", "Asia/Seoul", "Europe/Berlin", "America/New_York", "UTC"]
    parts = sched.local_parts(date, wall, zones)
    assert parts == sorted({utc("2026-03-08T00:00:00"), utc("2026-03-08T08:00:00"),
                            utc("2026-03-08T13:00:00"), utc("2026-03-08T09:00:00")})  # fmt: skip
    assert sched.part_of(utc("2026-03-08T00:00:00"), parts) == 1  # Tokyo and Seoul share a part
    assert sched.part_of(utc("2026-03-08T09:00:00"), parts) == 3
    assert sched.part_of(utc("2026-03-08T13:00:00"), parts) == 4
    every = sched.local_parts(date, wall)
    assert every[0] == utc("2026-03-07T19:00:00")  # Kiritimati, UTC+14, first
    assert every[-1] == utc("2026-03-08T21:00:00")  # UTC-12 last
    assert len(every) == len(set(every))


def test_an_unknown_zone_falls_back_to_the_default() -> None:
    assert sched.zone_or_default("Mars/Olympus", "Europe/Paris") == "Europe/Paris"
    assert sched.zone_or_default("", "UTC") == "UTC"
    assert sched.zone_or_default("Asia/Tokyo", "UTC") == "Asia/Tokyo"
    assert not sched.valid_zone("Mars/Olympus") and sched.valid_zone("Asia/Tokyo")


def test_cron_runs_at_local_nine_on_both_sides_of_a_dst_change() -> None:
    first = sched.cron_next("0 9 * * *", "Europe/Berlin", utc("2026-03-28T12:00:00"))
    assert first == utc("2026-03-29T07:00:00")  # CEST: 07:00 UTC
    assert sched.cron_next("0 9 * * *", "Europe/Berlin", first) == utc("2026-03-30T07:00:00")
    before = sched.cron_next("0 9 * * *", "Europe/Berlin", utc("2026-03-27T12:00:00"))
    assert before == utc("2026-03-28T08:00:00")  # CET: 08:00 UTC


def test_cron_is_strictly_after_and_refuses_nonsense() -> None:
    at_nine = utc("2026-03-28T09:00:00")
    assert sched.cron_next("0 9 * * *", "UTC", at_nine) == utc("2026-03-29T09:00:00")
    assert sched.cron_next("0 9 * * *", "UTC", at_nine - 1) == at_nine
    with pytest.raises(sched.CronSimError):
        sched.cron_next("61 * * * *", "UTC", at_nine)
    with pytest.raises(ValueError, match="unknown time zone"):
        sched.cron_next("0 9 * * *", "Mars/Base", at_nine)
