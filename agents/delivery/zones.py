"""The user's zone and local calendar: what caps' days and quiet hours are measured in."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import zoneinfo


@functools.lru_cache(maxsize=1024)
def zone_of(name: str, default: str) -> zoneinfo.ZoneInfo:
    """The zone ``name``, or ``default`` when it is empty or unknown (a bad profile value
    must not stop a message)."""
    try:
        return zoneinfo.ZoneInfo(name) if name else zoneinfo.ZoneInfo(default)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(default)


def local(now_ms: int, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.fromtimestamp(now_ms / 1000, zone)


def at(day: dt.date, time: dt.time, zone: dt.tzinfo) -> int:
    """The instant (ms) a wall clock in ``zone`` shows ``time`` on ``day``. zoneinfo resolves a
    time skipped by a DST change with the offset before it (02:30 becomes 03:30)."""
    return int(dt.datetime.combine(day, time, zone).timestamp() * 1000)


def day_start(now_ms: int, zone: dt.tzinfo) -> int:
    return at(local(now_ms, zone).date(), dt.time(0), zone)


def next_day_start(now_ms: int, zone: dt.tzinfo) -> int:
    return at(local(now_ms, zone).date() + dt.timedelta(days=1), dt.time(0), zone)


def spread(message_id: str, start_ms: int, spread_ms: int) -> int:
    """A point of ``[start, start + spread)`` fixed by the message id: deferred messages do not
    all go at the same instant, and a replayed batch defers each to the same time again."""
    if spread_ms <= 0:
        return start_ms
    digest = hashlib.blake2b(message_id.encode(), digest_size=8).digest()
    return start_ms + int.from_bytes(digest, "big") % spread_ms
