"""Pop-up storage: what the app shows over its own screens, read through the HTTP API.

A pop-up is visible while ``show_from <= now < show_until`` and it is not
dismissed. A show-once pop-up is also hidden once a read has returned it:
:meth:`PopupStore.active` claims it with a conditional ``UPDATE`` (``shown_at
IS NULL``), and returns it only when that update changed the row, so two reads
racing for it (two devices of one user) return it once between them. No
explicit transaction or row lock is needed, which keeps the read path the same
on MariaDB and on TiDB (optimistic or pessimistic).

A pop-up has a ``type``: ``message``, or ``upgrade`` asking the user to upgrade the app,
whose ``details`` name the ``platform``, ``minimum_version`` and ``upgrade_url``. A read
may leave out the upgrade pop-ups of an app already at their minimum (``hidden``): they
stay for an older app of the user to show.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from models.storage import execute_rows
from rules.versions import version_key

MESSAGE, UPGRADE = "message", "upgrade"


@dataclasses.dataclass(frozen=True, slots=True)
class PopupItem:
    message_id: str
    user_id: str
    rule_id: str
    template: str
    title: str
    body: str
    priority: int  # 0..9, higher first
    show_from: int  # ms since epoch, inclusive
    show_until: int  # ms since epoch, exclusive
    show_once: bool
    created_at: int  # ms since epoch
    shown_at: int | None = None  # set by the read that returned a show-once pop-up
    dismissed_at: int | None = None
    type: str = MESSAGE
    details: str = ""  # JSON object of what the type carries; "" for a message

    @property
    def detail_map(self) -> dict[str, str]:
        value = orjson.loads(self.details) if self.details else {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


POPUP_COLUMNS = ", ".join(field.name for field in dataclasses.fields(PopupItem))

# Visible now and not used up. The (user_id, show_until) index narrows the scan
# to the user's unexpired pop-ups; the rest is filtered and sorted in memory.
_ACTIVE = (
    f"SELECT {POPUP_COLUMNS} FROM popups "
    "WHERE user_id = %s AND show_until > %s AND show_from <= %s "
    "AND dismissed_at IS NULL AND (show_once = 0 OR shown_at IS NULL) "
    "ORDER BY priority DESC, show_from DESC, message_id DESC LIMIT %s"
)
_CLAIM = (
    "UPDATE popups SET shown_at = %s "
    "WHERE message_id = %s AND user_id = %s AND shown_at IS NULL AND dismissed_at IS NULL"
)


class PopupStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def insert(self, items: Sequence[PopupItem]) -> None:
        """Store pop-ups; a message id already stored is left as it is (idempotent).

        A replay never moves the window nor resets ``shown_at``/``dismissed_at``.
        """
        rows = [dataclasses.astuple(item) for item in items]
        await execute_rows(
            self.pool,
            f"INSERT INTO popups ({POPUP_COLUMNS})",
            "ON DUPLICATE KEY UPDATE message_id = message_id",
            rows,
        )

    async def active(
        self, user_id: str, now_ms: int, limit: int, hidden: Callable[[PopupItem], bool] | None = None
    ) -> list[PopupItem]:
        """What to show now: highest priority first, then the most recent window start.

        Show-once pop-ups in the result are marked shown at ``now_ms`` and are
        never returned again. A show-once pop-up that a concurrent read claimed
        first is left out, so the result may hold fewer than ``limit`` items, as are
        those ``hidden`` says this reader should not see (they are not marked shown).
        """
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(_ACTIVE, [user_id, now_ms, now_ms, limit])
            candidates = [_item(row) for row in await cur.fetchall()]
            if hidden is not None:
                candidates = [item for item in candidates if not hidden(item)]
            shown = []
            for item in candidates:
                if not item.show_once:
                    shown.append(item)
                elif await _claim(cur, item, now_ms):
                    shown.append(dataclasses.replace(item, shown_at=now_ms))
        return shown

    async def dismiss(self, user_id: str, message_id: str, now_ms: int) -> bool:
        """Dismiss one pop-up; repeating it is harmless. False when the user has no such pop-up."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "UPDATE popups SET dismissed_at = COALESCE(dismissed_at, %s) "
                "WHERE user_id = %s AND message_id = %s",
                [now_ms, user_id, message_id],
            )
            if cur.rowcount:
                return True
            # MariaDB reports 0 changed rows for an already dismissed pop-up: look it up.
            await cur.execute(
                "SELECT 1 FROM popups WHERE user_id = %s AND message_id = %s", [user_id, message_id]
            )
            return await cur.fetchone() is not None

    async def owns(self, user_id: str, message_id: str) -> bool:
        """Whether the user has this pop-up (shown, dismissed or expired alike)."""
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT 1 FROM popups WHERE message_id = %s AND user_id = %s", [message_id, user_id]
            )
            return await cur.fetchone() is not None


def upgraded(platform: str | None, version: str | None) -> Callable[[PopupItem], bool] | None:
    """The ``hidden`` test of a read by an app that says what it is: an upgrade pop-up of
    its platform (or of none) whose minimum it has reached. None when the app says nothing."""
    key = version_key(version)
    if platform is None or key is None:
        return None
    name = platform.strip().lower()

    def at_minimum(item: PopupItem) -> bool:
        if item.type != UPGRADE:
            return False
        details = item.detail_map
        minimum = version_key(details.get("minimum_version"))
        return details.get("platform", "") in ("", name) and minimum is not None and key >= minimum

    return at_minimum


async def _claim(cur: Any, item: PopupItem, now_ms: int) -> bool:
    """Mark a show-once pop-up shown; False when a concurrent read did it first."""
    await cur.execute(_CLAIM, [now_ms, item.message_id, item.user_id])
    return bool(cur.rowcount)


def _item(row: Sequence[Any]) -> PopupItem:
    item = PopupItem(*row)
    return dataclasses.replace(item, show_once=bool(item.show_once), details=item.details or "")
