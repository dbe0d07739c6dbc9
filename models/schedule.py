"""When a reach task runs: pure time arithmetic, no I/O, every clock passed in.

Times are epoch milliseconds. Wall-clock times are resolved with :mod:`zoneinfo`:

- A local time that a DST change skips (02:30 on the night clocks jump from 02:00
  to 03:00) is read with the offset in force before the jump, so it lands at 03:30
  by the new clock: the message still goes, as soon after the intended moment as
  the clock allows. A local time that happens twice (the hour after clocks go back)
  is its first occurrence. That is ``fold=0``, Python's and cronsim's rule.
- A **local-time** task (``09:00`` on a date in every recipient's zone) runs in
  parts: one per distinct UTC instant at which some zone reaches that wall-clock
  time. A recipient belongs to the part at their own zone's instant.
- A **cron** task is evaluated in its own zone by cronsim, which handles DST
  (croniter has open DST bugs, e.g. pallets-eco/croniter#191).
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterable, Sequence

from cronsim import CronSim, CronSimError

__all__ = [
    "CronSimError",
    "cron_next",
    "local_instant",
    "local_parts",
    "part_of",
    "valid_zone",
    "zone_or_default",
]


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def valid_zone(name: str) -> bool:
    return bool(name) and _zone(name) is not None


def zone_or_default(name: str, default: str) -> str:
    """The recipient's zone: the profile's when it is a known IANA name, else ``default``."""
    return name if name and _zone(name) is not None else default


def local_instant(date: dt.date, wall: dt.time, zone: str) -> int:
    """The epoch ms at which ``zone``'s clocks show ``date`` ``wall`` (``fold=0``, see above)."""
    tz = _zone(zone)
    if tz is None:
        raise ValueError(f"unknown time zone {zone!r}")
    local = dt.datetime.combine(date, wall.replace(fold=0), tzinfo=tz)
    return int(local.timestamp() * 1000)


@functools.lru_cache(maxsize=64)
def _all_zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


def local_parts(date: dt.date, wall: dt.time, zones: Iterable[str] | None = None) -> list[int]:
    """The sorted distinct instants at which some zone (every IANA zone by default) shows
    ``date`` ``wall``: the parts a local-time task runs in."""
    names = _all_zones() if zones is None else zones
    return sorted({local_instant(date, wall, name) for name in names if _zone(name) is not None})


def part_of(instant: int, parts: Sequence[int]) -> int:
    """The 1-based part a recipient due at ``instant`` belongs to: the first part at or
    after it (every zone's instant is a part, so it is that part itself)."""
    low, high = 0, len(parts)
    while low < high:
        middle = (low + high) // 2
        if parts[middle] < instant:
            low = middle + 1
        else:
            high = middle
    return min(low, len(parts) - 1) + 1


def cron_next(expression: str, zone: str, after_ms: int) -> int:
    """The first time strictly after ``after_ms`` matching ``expression`` in ``zone``.

    Raises :class:`CronSimError` for a bad expression and ``ValueError`` for a bad zone.
    """
    tz = _zone(zone)
    if tz is None:
        raise ValueError(f"unknown time zone {zone!r}")
    start = dt.datetime.fromtimestamp(after_ms / 1000, tz)
    # cronsim yields times after its start at whole seconds; drop the milliseconds first.
    following = next(iter(CronSim(expression, start.replace(microsecond=0))))
    return int(following.timestamp() * 1000)
