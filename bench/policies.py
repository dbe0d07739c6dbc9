"""The policies of the pipeline bench's policy comparison (``bench/pipeline.py``).

The bench's messages are of the default category (``notification``) on the inbox. The
file caps them per user (3 a day across channels, 2 an hour on the inbox) and gives the
category an hour of quiet hours five to six hours away (in the users' zone, the default), so
every message goes through the opt-out read, the quiet-hours check and the cap script,
and is still sent: each user gets one message. What the checks held is counted from the
run's result rows and Redis keys, so a bench that suppressed or deferred says so.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import redis

from reach.settings import Settings
from tests.integration.harness import Db

QUIET_FROM_NOW = dt.timedelta(hours=6)


def quiet_hours(now: dt.datetime) -> tuple[str, str]:
    """An hour of quiet hours, on the hour, that ``now`` (UTC) is five to six hours before."""
    start = now + QUIET_FROM_NOW
    return start.strftime("%H:00"), (start + dt.timedelta(hours=1)).strftime("%H:00")


def policies_yaml(start: str, end: str) -> str:
    """Caps one message per user never reaches, and quiet hours from ``start`` to ``end``."""
    return f"""
bypass_priority: 9
categories:
  notification:
    caps:
      - {{limit: 3, per: day}}
      - {{limit: 2, per: 3600, channel: inbox}}
    over_cap: suppress
    quiet_hours:
      - {{start: "{start}", end: "{end}", action: defer, spread_seconds: 600}}
"""


def write_policies(tmp: Path) -> tuple[Path, str]:
    """The policies file for a run started now, and a one-line description of it."""
    path = tmp / "policies.yaml"
    start, end = quiet_hours(dt.datetime.now(dt.UTC))
    path.write_text(policies_yaml(start, end))
    caps = "caps 3/day across channels and 2/hour on the inbox"
    return path, f"notification: {caps}; quiet hours {start}-{end} UTC, defer"


def held(settings: Settings, db: Db) -> dict[str, Any]:
    """What the policies did in a run: results suppressed (by reason), messages deferred,
    and the cap sets written (one per user and scope when every message was counted)."""
    rows = db.query(
        "SELECT error_code, COUNT(*) FROM delivery_results WHERE status = 'suppressed' GROUP BY error_code"
    )
    client = redis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        deferred = int(client.zcard(f"{settings.redis_prefix}deferred"))
        cap_keys = sum(1 for _ in client.scan_iter(f"{settings.redis_prefix}cap:*", count=5000))
    finally:
        client.close()
    by_reason = {str(code): int(n) for code, n in rows}
    return {
        "suppressed": sum(by_reason.values()),
        "suppressed_by_reason": by_reason,
        "deferred": deferred,
        "cap_keys": cap_keys,
    }
