"""Phone numbers to users, for signals that name only a number (a Twilio STOP).

``phone_index`` maps a keyed hash of each profile's ``contact.phone`` to its user:
``HMAC-SHA256(REACH_PHONE_INDEX_KEY, number in E.164)``, never the number itself, so
the index is no phone book to whoever reads the table (the profile row keeps the
number, as the senders need it). It is written in the transaction that writes the
profiles (:class:`models.storage.ProfileStore`), so the two always agree; several
users may share a number, and a signal from it then applies to each of them.

Numbers are compared in E.164 (``+`` and 7 to 15 digits): spaces, dashes, dots, slashes
and parentheses are dropped and a leading ``00`` becomes ``+``. A profile number that
is not E.164 after that (a national number without its country code) is not indexed:
no provider that signals by number could have sent to it as written.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pymysql

from models.profiles import UserProfile
from reach.settings import Settings

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SEPARATORS = re.compile(r"[\s().\-/]")
PAGE = 500  # profiles per transaction when rebuilding
RETRYABLE = frozenset({1213, 9007})  # deadlock (MySQL), write conflict (TiDB)
TRIES = 3


def e164(phone: str) -> str | None:
    """``phone`` in E.164, or None when it is not an international number."""
    text = _SEPARATORS.sub("", phone)
    if text.startswith("00"):
        text = "+" + text[2:]
    return text if E164.match(text) else None


class PhoneHasher:
    """The index's keyed hash. The key must be the same in the worker and the API."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> PhoneHasher:
        return cls(settings.phone_index_key.get_secret_value().encode())

    def digest(self, phone: str) -> str | None:
        """The hash of ``phone``'s E.164 form in hex (aiomysql cannot send bytes parameters
        with the PyMySQL it runs on); None when it has no E.164 form."""
        number = e164(phone)
        if number is None:
            return None
        return hmac.new(self._key, number.encode(), hashlib.sha256).hexdigest()


def rows_of(profiles: Sequence[UserProfile], hasher: PhoneHasher, now_ms: int) -> list[tuple[Any, ...]]:
    """The index rows of these (live) profiles: one per user with an indexable phone."""
    rows = []
    for profile in profiles:
        digest = hasher.digest(profile.contact.get("phone", ""))
        if digest is not None:
            rows.append((digest, profile.user_id, now_ms))
    return rows


async def replace_rows(
    cur: Any, hasher: PhoneHasher, user_ids: Sequence[str], live: Sequence[UserProfile], now_ms: int
) -> None:
    """Within the profile write's transaction: the rows of ``user_ids`` become those of
    their ``live`` profiles (a deleted profile, or one without a phone, leaves none)."""
    if user_ids:
        marks = ",".join(["%s"] * len(user_ids))
        await cur.execute(f"DELETE FROM phone_index WHERE user_id IN ({marks})", list(user_ids))
    rows = rows_of(live, hasher, now_ms)
    if rows:
        marks = ",".join(["(%s,%s,%s)"] * len(rows))
        await cur.execute(
            f"INSERT INTO phone_index (phone_hash, user_id, updated_at) VALUES {marks} "
            "ON DUPLICATE KEY UPDATE updated_at = VALUES(updated_at)",
            [v for row in rows for v in row],
        )


async def rebuild(cur: Any, hasher: PhoneHasher, now_ms: int) -> int:
    """Index every stored profile again, page by page (after the table is created, or
    the key changed); returns how many profiles were read. Idempotent."""
    after, seen = "", 0
    while True:
        page = await _retrying(functools.partial(_reindex_page, cur, hasher, after, now_ms))
        if not page:
            return seen
        after, seen = page[-1], seen + len(page)


async def _reindex_page(cur: Any, hasher: PhoneHasher, after: str, now_ms: int) -> list[str]:
    """One page in one transaction. ``FOR UPDATE`` holds the profiles' rows, so a profile
    the worker changes meanwhile is indexed after this page, never overwritten by it."""
    await cur.execute("START TRANSACTION")
    try:
        await cur.execute(
            "SELECT user_id, contact FROM user_profiles WHERE user_id > %s ORDER BY user_id LIMIT %s "
            "FOR UPDATE",
            [after, PAGE],
        )
        profiles = [_profile(user_id, contact) for user_id, contact in await cur.fetchall()]
        await replace_rows(cur, hasher, [p.user_id for p in profiles], profiles, now_ms)
        await cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # a lost connection must not hide the cause
            await cur.execute("ROLLBACK")
        raise
    return [p.user_id for p in profiles]


async def _retrying(page: Callable[[], Awaitable[list[str]]]) -> list[str]:
    """``page()``, again after a deadlock or a TiDB write conflict (up to 3 tries)."""
    for attempt in range(1, TRIES + 1):
        try:
            return await page()
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in RETRYABLE or attempt == TRIES:
                raise
    raise AssertionError("unreachable")


def _profile(user_id: str, contact: str) -> UserProfile:
    stored = orjson.loads(contact) if contact else {}
    phone = stored.get("phone") if isinstance(stored, dict) else None
    return UserProfile(user_id, contact={"phone": phone} if isinstance(phone, str) else {})


async def reindex(pool: Any, hasher: PhoneHasher, now_ms: int) -> int:
    """:func:`rebuild` on a connection of ``pool``: ``reach db reindex-phones``, after the
    key changed (until it ends, users not reached yet are found under the old key only)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        return await rebuild(cur, hasher, now_ms)


class PhoneIndex:
    """The API's read side: which users a number belongs to."""

    def __init__(self, pool: Any, hasher: PhoneHasher) -> None:
        self.pool = pool
        self.hasher = hasher

    async def users_of(self, phone: str) -> list[str]:
        digest = self.hasher.digest(phone)
        if digest is None:
            return []
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT user_id FROM phone_index WHERE phone_hash = %s ORDER BY user_id", [digest]
            )
            return [user_id for (user_id,) in await cur.fetchall()]
