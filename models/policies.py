"""The policies file: frequency caps, quiet hours and opt-out handling per category.

Shape (``deploy/config/policies.yaml``, path in ``REACH_POLICIES_FILE``)::

    bypass_priority: 9            # a message of this priority or higher skips caps and quiet hours
    categories:
      marketing:
        caps:                     # all of them hold; channel omitted = across channels
          - {limit: 3, per: day}              # calendar day in the user's zone
          - {limit: 1, per: day, channel: sms}
          - {limit: 2, per: 3600}             # rolling window, seconds
        over_cap: suppress        # or defer (to when the cap frees)
        quiet_hours:
          - {start: "21:00", end: "08:00", action: defer, spread_seconds: 3600}
      transactional:
        opt_out: false            # sent even to users who opted out (receipts, security)

A category the file does not name has no caps and no quiet hours and respects opt-outs.
Every problem raises :class:`PolicyFileError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

ANY = "*"
DAY = "day"
# A day cap's members are kept this long: the longest calendar day (25 h at a DST change)
# seen from any zone (UTC-12 to UTC+14) fits in it.
DAY_KEEP_MS = 50 * 3600 * 1000


class PolicyFileError(ValueError):
    """The policies file is unreadable or invalid; the message says where and why."""


class Action(enum.StrEnum):
    SUPPRESS = "suppress"  # a result row with status suppressed; never sent
    DEFER = "defer"  # back on the deferred queue until the cap frees or the quiet period ends


@dataclasses.dataclass(frozen=True, slots=True)
class Cap:
    limit: int
    channel: str = ANY  # a channel, or every channel together
    window_ms: int = 0  # rolling window; 0 = the calendar day in the user's zone

    @property
    def per_day(self) -> bool:
        return self.window_ms == 0

    @property
    def keep_ms(self) -> int:
        return DAY_KEEP_MS if self.per_day else self.window_ms


@dataclasses.dataclass(frozen=True, slots=True)
class QuietHours:
    start: dt.time
    end: dt.time
    channels: tuple[str, ...] = (ANY,)
    action: Action = Action.DEFER  # DEFER to the end (spread over spread_ms), or SUPPRESS (drop)
    spread_ms: int = 0

    def applies_to(self, channel: str) -> bool:
        return ANY in self.channels or channel in self.channels


@dataclasses.dataclass(frozen=True, slots=True)
class CategoryPolicy:
    caps: tuple[Cap, ...] = ()
    over_cap: Action = Action.SUPPRESS
    cap_spread_ms: int = 0  # a deferred message goes at a stable point of this interval after the cap frees
    quiet_hours: tuple[QuietHours, ...] = ()
    opt_out: bool = True  # False: the user's preferences do not stop it

    def caps_for(self, channel: str) -> tuple[Cap, ...]:
        return tuple(c for c in self.caps if c.channel in (ANY, channel))


NO_POLICY = CategoryPolicy()


@dataclasses.dataclass(frozen=True)
class Policies:
    categories: Mapping[str, CategoryPolicy] = dataclasses.field(default_factory=dict)
    bypass_priority: int = 9

    def of(self, category: str) -> CategoryPolicy:
        return self.categories.get(category, NO_POLICY)


def load_policies(path: Path | None, known_categories: Collection[str]) -> Policies:
    """The file's policies (none when ``path`` is None); raises :class:`PolicyFileError`."""
    if path is None:
        return Policies()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc}") from exc
    try:
        return parse_policies(data, known_categories)
    except (ValueError, TypeError, KeyError) as exc:
        raise PolicyFileError(f"{path}: {exc}") from exc


def parse_policies(data: Any, known_categories: Collection[str]) -> Policies:
    _keys(data, {"bypass_priority", "categories"}, "the file")
    categories: dict[str, CategoryPolicy] = {}
    for name, body in (data.get("categories") or {}).items():
        if name not in known_categories:
            raise ValueError(f"unknown category {name!r} (known: {', '.join(known_categories)})")
        categories[name] = _category(name, body or {})
    bypass = data.get("bypass_priority", 9)
    if not isinstance(bypass, int) or not 0 <= bypass <= 10:
        raise ValueError("'bypass_priority' must be an integer from 0 to 10 (10: nothing bypasses)")
    return Policies(MappingProxyType(categories), bypass)


def _category(name: str, body: Any) -> CategoryPolicy:
    where = f"category {name!r}"
    _keys(body, {"caps", "over_cap", "cap_spread_seconds", "quiet_hours", "opt_out"}, where)
    return CategoryPolicy(
        caps=tuple(_cap(c, where) for c in body.get("caps") or []),
        over_cap=_action(body.get("over_cap", "suppress"), f"{where} over_cap"),
        cap_spread_ms=_seconds(body.get("cap_spread_seconds", 0), f"{where} cap_spread_seconds"),
        quiet_hours=tuple(_quiet(q, where) for q in body.get("quiet_hours") or []),
        opt_out=_bool(body.get("opt_out", True), f"{where} opt_out"),
    )


def _cap(body: Any, where: str) -> Cap:
    _keys(body, {"limit", "per", "channel"}, f"{where} cap")
    limit = body.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"{where}: a cap's 'limit' must be an integer >= 0, got {limit!r}")
    per = body.get("per", DAY)
    window = 0 if per == DAY else _seconds(per, f"{where} cap 'per' (day or seconds)")
    if per != DAY and window <= 0:
        raise ValueError(f"{where}: a cap's 'per' must be 'day' or a number of seconds > 0")
    return Cap(limit, str(body.get("channel", ANY)), window)


def _quiet(body: Any, where: str) -> QuietHours:
    _keys(body, {"start", "end", "channels", "action", "spread_seconds"}, f"{where} quiet_hours")
    start, end = _clock(body.get("start"), where), _clock(body.get("end"), where)
    if start == end:
        raise ValueError(f"{where}: quiet hours must not start and end at the same time")
    channels = body.get("channels", [ANY])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ValueError(f"{where}: quiet_hours 'channels' must be a list of channel names")
    action = _action(body.get("action", "defer"), f"{where} quiet_hours action")
    return QuietHours(start, end, tuple(channels), action, _seconds(body.get("spread_seconds", 0), where))


def _keys(body: Any, allowed: set[str], where: str) -> None:
    if not isinstance(body, dict):
        raise ValueError(f"{where} must be a mapping")
    unknown = set(body) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(allowed)})")


def _action(value: Any, where: str) -> Action:
    aliases = {"drop": Action.SUPPRESS}
    try:
        return aliases.get(value) or Action(value)
    except ValueError:
        raise ValueError(f"{where} must be suppress, drop or defer, got {value!r}") from None


def _clock(value: Any, where: str) -> dt.time:
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{where}: quiet hours take times as HH:MM, got {value!r}") from None


def _seconds(value: Any, where: str) -> int:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where} must be a number of seconds >= 0, got {value!r}")
    return int(value * 1000)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value
