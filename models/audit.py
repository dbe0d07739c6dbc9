"""The audit log: who did what to reach's configuration, kept in MariaDB (``audit_log``).

Operator actions call :func:`record` (keys, tasks, preference changes made by an
operator). ``actor`` names who acted (``cli:<os user>``, ``key:<key id>``), ``target``
what was acted on; ``detail`` is a small JSON object and must never carry a secret,
a token or a user's contact data.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

MAX_ACTOR, MAX_TARGET, MAX_ACTION = 160, 160, 64


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEntry:
    at: int  # epoch ms
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any]


async def record(
    pool: Any, actor: str, action: str, target: str, now_ms: int, detail: Mapping[str, Any] | None = None
) -> None:
    """Append one entry. Raises what MariaDB raises: an action that cannot be audited
    should fail loudly rather than happen unrecorded (callers record before answering)."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await record_on(cur, AuditEntry(now_ms, actor, action, target, detail or {}))


async def record_on(cur: Any, entry: AuditEntry) -> None:
    """Append ``entry`` on an open cursor, so it can share the action's own transaction."""
    await cur.execute(
        "INSERT INTO audit_log (audit_id, at, actor, action, target, detail) VALUES (%s,%s,%s,%s,%s,%s)",
        [
            uuid.uuid4().hex,
            entry.at,
            entry.actor[:MAX_ACTOR],
            entry.action[:MAX_ACTION],
            entry.target[:MAX_TARGET],
            orjson.dumps(dict(entry.detail)).decode(),
        ],
    )


async def recent(pool: Any, limit: int = 50) -> list[AuditEntry]:
    """The latest ``limit`` entries, oldest first."""
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY at DESC, audit_id LIMIT %s",
            [limit],
        )
        rows = await cur.fetchall()
    return [AuditEntry(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in reversed(rows)]
