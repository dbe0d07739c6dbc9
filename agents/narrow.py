"""Narrow a failed batch step down to the items that cause the failure.

A multi-row write that the database refuses for one row's sake (a value too
long for its column, a packet over ``max_allowed_packet``) fails for the whole
batch. :func:`narrow` runs the step again on halves, down to single items, so
the other items are written and only the ones refused alone are reported.
The step must be idempotent (the writes here are upserts keyed by natural
ids): a half that succeeded before its sibling failed may run again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import pymysql

T = TypeVar("T")

#: MariaDB/MySQL errors about what was sent, not about the server's health. pymysql maps
#: unknown error numbers >= 1000 to OperationalError, the class of "server unavailable",
#: so the ones that are about the data are listed by number.
REFUSED_OPERATIONAL_CODES = frozenset(
    {
        1118,  # ER_TOO_BIG_ROWSIZE
        1153,  # ER_NET_PACKET_TOO_LARGE: the statement is over max_allowed_packet
        1301,  # ER_WARN_ALLOWED_PACKET_OVERFLOWED: a function result over max_allowed_packet
        1366,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD (incorrect string value)
        3140,  # ER_INVALID_JSON_TEXT
        4025,  # ER_CONSTRAINT_FAILED (MariaDB CHECK)
    }
)


def is_refusal(exc: BaseException) -> bool:
    """True when the database refused the data of a write (as opposed to being unavailable)."""
    if isinstance(exc, pymysql.err.DataError | pymysql.err.IntegrityError):
        return True
    return (
        isinstance(exc, pymysql.err.OperationalError)
        and bool(exc.args)
        and exc.args[0] in REFUSED_OPERATIONAL_CODES
    )


async def narrow(
    items: Sequence[T],
    step: Callable[[Sequence[T]], Awaitable[None]],
    refused: Callable[[BaseException], bool] = is_refusal,
) -> list[tuple[T, BaseException]]:
    """Run ``step(items)``; when it raises an error ``refused`` accepts, run it on each
    half instead, recursively. Returns the single items still refused, with their error;
    any other error propagates (a dependency outage is retried by the caller's guard).
    """
    if not items:
        return []
    try:
        await step(items)
        return []
    except Exception as exc:
        if not refused(exc):
            raise
        if len(items) == 1:
            return [(items[0], exc)]
    middle = len(items) // 2
    return await narrow(items[:middle], step, refused) + await narrow(items[middle:], step, refused)


def describe(exc: BaseException, limit: int = 300) -> str:
    """A short ``Type: message`` for a dead-letter record or a result row."""
    return f"{type(exc).__name__}: {exc}"[:limit]
