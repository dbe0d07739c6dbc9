"""API keys of calling systems: scopes, the event names a key may emit, and their store.

A key is shown once, as ``rk_<key id>_<secret>``; MariaDB keeps the key id in clear and a
SHA-256 of the secret (the secret is 256 random bits, so no slow hash is needed: there is
nothing to guess). Every change is written to the audit log in the same transaction.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from models.audit import AuditEntry, record_on
from models.storage import in_transaction

TOKEN_PREFIX = "rk_"
KEY_ID_LENGTH = 16  # hex characters
MAX_NAME = 128
# A write conflict (TiDB) or a deadlock rolls the change back; it is simply run again.
RETRYABLE = frozenset({1213, 9007})
COLUMNS = (
    "key_id, name, secret_hash, previous_hash, previous_until, scopes, events, rate_limit, "
    "created_at, rotated_at, revoked_at"
)


class Scope(enum.StrEnum):
    EVENTS_WRITE = "events:write"
    INBOX_READ = "inbox:read"  # any user's inbox and pop-ups: read, mark read, dismiss
    PREFERENCES_WRITE = "preferences:write"  # any user's preferences: read and change
    TASKS_WRITE = "tasks:write"
    STATS_READ = "stats:read"
    ADMIN = "admin"  # every scope


class KeyOperationError(ValueError):
    """A key operation that cannot be done: unknown key, bad scope or name."""


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    secret_hash: str
    previous_hash: str | None
    previous_until: int | None
    scopes: frozenset[Scope]
    events: frozenset[str] | None  # None: any event name
    rate_limit: int | None  # requests per window; None: the default, 0: unlimited
    created_at: int
    rotated_at: int | None
    revoked_at: int | None

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def matches(self, secret: str, now_ms: int) -> bool:
        """True when ``secret`` is the key's secret, or its previous one within the grace period."""
        digest = hash_secret(secret)
        if hmac.compare_digest(digest, self.secret_hash):
            return True
        grace = self.previous_hash is not None and (self.previous_until or 0) > now_ms
        return grace and hmac.compare_digest(digest, self.previous_hash or "")

    def public(self) -> dict[str, Any]:
        """What ``reach keys list`` shows: everything but the hashes."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "events": sorted(self.events) if self.events is not None else None,
            "rate_limit": self.rate_limit,
            "created_at": self.created_at,
            "rotated_at": self.rotated_at,
            "revoked_at": self.revoked_at,
        }


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def format_token(key_id: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of an ``rk_...`` token, None when it is not shaped like one."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    key_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(key_id) != KEY_ID_LENGTH or not secret:
        return None
    return key_id, secret


def parse_scopes(names: Iterable[str]) -> frozenset[Scope]:
    """Raises :class:`KeyOperationError` naming the known scopes for an unknown one."""
    known = {s.value: s for s in Scope}
    scopes = set()
    for name in names:
        if name not in known:
            raise KeyOperationError(f"unknown scope {name!r}; known: {', '.join(known)}")
        scopes.add(known[name])
    if not scopes:
        raise KeyOperationError("a key needs at least one scope")
    return frozenset(scopes)


def key_from_row(row: Sequence[Any]) -> ApiKey:
    events = orjson.loads(row[6]) if row[6] is not None else None
    return ApiKey(
        key_id=row[0],
        name=row[1],
        secret_hash=row[2],
        previous_hash=row[3],
        previous_until=row[4],
        scopes=frozenset(Scope(s) for s in row[5].split(",") if s in Scope._value2member_map_),
        events=frozenset(events) if events is not None else None,
        rate_limit=row[7],
        created_at=row[8],
        rotated_at=row[9],
        revoked_at=row[10],
    )


@dataclasses.dataclass(frozen=True, slots=True)
class NewKey:
    scopes: frozenset[Scope]
    events: frozenset[str] | None = None
    rate_limit: int | None = None


class KeyStore:
    """The ``api_keys`` table. ``actor`` of every change goes to the audit log."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def create(self, name: str, spec: NewKey, actor: str, now_ms: int) -> tuple[ApiKey, str]:
        """A new key and its token (shown once)."""
        if not name or len(name) > MAX_NAME:
            raise KeyOperationError(f"a key name is 1-{MAX_NAME} characters")
        key_id, secret = secrets.token_hex(KEY_ID_LENGTH // 2), secrets.token_urlsafe(32)
        events = orjson.dumps(sorted(spec.events)).decode() if spec.events is not None else None
        row = (key_id, name, hash_secret(secret), None, None, ",".join(sorted(spec.scopes)), events,
               spec.rate_limit, now_ms, None, None)  # fmt: skip
        audit = AuditEntry(now_ms, actor, "key.create", key_id, {"name": name, **key_from_row(row).public()})

        async def work(_conn: Any, cur: Any) -> None:
            await cur.execute(f"INSERT INTO api_keys ({COLUMNS}) VALUES ({','.join(['%s'] * 11)})", row)
            await record_on(cur, audit)

        await in_transaction(self.pool, work, RETRYABLE, 3)
        return key_from_row(row), format_token(key_id, secret)

    async def rotate(self, key_id: str, grace_ms: int, actor: str, now_ms: int) -> str:
        """A new secret for ``key_id``; the old one keeps working for ``grace_ms``."""
        secret = secrets.token_urlsafe(32)

        async def work(_conn: Any, cur: Any) -> None:
            await cur.execute(
                "UPDATE api_keys SET previous_hash = secret_hash, previous_until = %s, secret_hash = %s, "
                "rotated_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                [now_ms + grace_ms, hash_secret(secret), now_ms, key_id],
            )
            if not cur.rowcount:
                raise KeyOperationError(f"no active key {key_id!r}")
            await record_on(cur, AuditEntry(now_ms, actor, "key.rotate", key_id, {"grace_ms": grace_ms}))

        await in_transaction(self.pool, work, RETRYABLE, 3)
        return format_token(key_id, secret)

    async def revoke(self, key_id: str, actor: str, now_ms: int) -> None:
        async def work(_conn: Any, cur: Any) -> None:
            await cur.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL",
                [now_ms, key_id],
            )
            if not cur.rowcount:
                raise KeyOperationError(f"no active key {key_id!r}")
            await record_on(cur, AuditEntry(now_ms, actor, "key.revoke", key_id, {}))

        await in_transaction(self.pool, work, RETRYABLE, 3)

    async def all(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""
        return await self._select("ORDER BY created_at, key_id")

    async def active(self) -> dict[str, ApiKey]:
        """The keys that may authenticate, by key id: the API's cache snapshot."""
        return {k.key_id: k for k in await self._select("WHERE revoked_at IS NULL")}

    async def _select(self, tail: str) -> list[ApiKey]:
        async with self.pool.acquire() as conn:
            try:
                async with conn.cursor() as cur:
                    await cur.execute(f"SELECT {COLUMNS} FROM api_keys {tail}")
                    rows = await cur.fetchall()
            except BaseException:
                # A read cut short (timeout, lost connection) leaves its answer unread on the
                # connection: the pool must never hand that connection out again.
                conn.close()
                raise
        return [key_from_row(row) for row in rows]
