"""Quiet-hours step: no message of a category (and channel) while the user's clock is in
its quiet period, e.g. 21:00-08:00; deferred to the end of it (spread over an interval so
that 08:00 is not a spike) or dropped, as the policy says. Priority at or above
``bypass_priority`` is never held. Measured on the user's wall clock with ``zoneinfo``,
so a DST change moves the instant the period ends, not the hour it ends at.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from agents.delivery.batch import BatchOutcome
from agents.delivery.hold import Holds
from agents.delivery.zones import at, local, spread, zone_of
from models.messages import ReachMessage
from models.policies import Action, Policies, QuietHours

REASON = "quiet_hours"
DROPPED = "sent during the user's quiet hours, which this category drops"


def quiet_until(now_ms: int, zone: dt.tzinfo, quiet: QuietHours) -> int | None:
    """When the quiet period containing ``now_ms`` ends (ms), or None when it is not quiet."""
    now = local(now_ms, zone)
    time, overnight = now.time(), quiet.start > quiet.end
    inside = (time >= quiet.start or time < quiet.end) if overnight else quiet.start <= time < quiet.end
    if not inside:
        return None
    ends_tomorrow = overnight and time >= quiet.start
    return at(now.date() + dt.timedelta(days=int(ends_tomorrow)), quiet.end, zone)


def held_by(
    message: ReachMessage, policies: Policies, now_ms: int, default_zone: str
) -> tuple[QuietHours, int] | None:
    """The quiet period that holds ``message`` now and when it ends, or None."""
    if message.priority >= policies.bypass_priority:
        return None
    periods = [q for q in policies.of(message.category).quiet_hours if q.applies_to(message.channel)]
    if not periods:
        return None
    zone = zone_of(message.timezone, default_zone)
    for quiet in periods:
        until = quiet_until(now_ms, zone, quiet)
        if until is not None:
            return quiet, until
    return None


class Quiet:
    def __init__(self, policies: Policies, holds: Holds, default_zone: str) -> None:
        self.policies = policies
        self.holds = holds
        self.default_zone = default_zone

    def screen(self, messages: Sequence[ReachMessage], now: int, batch: BatchOutcome) -> list[ReachMessage]:
        """The messages outside their quiet hours; the others are deferred or dropped."""
        kept: list[ReachMessage] = []
        for message in messages:
            held = held_by(message, self.policies, now, self.default_zone)
            if held is None:
                kept.append(message)
            elif held[0].action is Action.DEFER:
                self.holds.defer(
                    message, REASON, spread(message.message_id, held[1], held[0].spread_ms), batch
                )
            else:
                self.holds.suppress(message, REASON, DROPPED, now, batch)
        return kept
