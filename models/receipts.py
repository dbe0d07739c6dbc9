"""Delivery receipts: provider status callbacks, deduplicated and applied forward-only.

A receipt says what became of one sent message: delivered, failed, or a
non-final step (queued, sent). Final receipts move the message's result row
(``delivery_results``) along this state machine and nowhere else::

    sent, unknown  --delivered receipt-->  delivered   (final)
    sent, unknown  --failed receipt----->  failed      (final)

Every other combination changes nothing: a receipt for a row already
delivered or failed is *stale* (providers send callbacks twice and out of
order), and a progress receipt has nothing to apply. ``ResultStore.upsert``
never overwrites a row a receipt has made final (``receipt_at`` is set).

Receipts are deduplicated in the ``receipts`` table by (provider, digest):
the same callback delivered twice is stored, applied and counted once. A
final receipt whose message has no result row yet (the provider called back
before the worker wrote its send result), or whose latest attempt is
``retrying`` (the row of the attempt it is about is still to come), is stored
as *unmatched*, and :meth:`ReceiptStore.rematch` applies it once the row appears.

A callback's transaction locks in one order: its receipts by digest, its result
rows by key, then the task counters, by key, in one statement; each locking statement
names its rows by primary key, so it locks no row it does not name. A
transaction the database still rolled back for a deadlock or a write conflict
is run again (``MAX_TRANSACTION_TRIES``).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

import orjson

from models.storage import in_transaction
from models.tasks import task_no_of

MAX_ERROR_LENGTH = 500
MIN_PHONE_DIGITS = 7  # a shorter common suffix could belong to two different numbers
MOVABLE = ("sent", "unknown")  # the result-row states a receipt may move forward from
# A later attempt is on its way: its row, the one the receipt is about, may not be written yet.
WAITING = "retrying"
# Deadlock (MySQL/MariaDB/TiDB) and TiDB's optimistic write conflict: the transaction was
# rolled back and may simply be run again.
RETRYABLE_ERRORS = frozenset({1213, 9007})
MAX_TRANSACTION_TRIES = 3


class ReceiptStatus(enum.StrEnum):
    DELIVERED = "delivered"  # the handset (or the far end) has it
    FAILED = "failed"  # the provider gave up on it
    PROGRESS = "progress"  # a non-final step (queued, sending, sent): nothing to apply


class Outcome(enum.StrEnum):
    """What one receipt did; also the ``status`` label of ``reach_receipts_total``."""

    DELIVERED = "delivered"  # moved its message to delivered
    FAILED = "failed"  # moved its message to failed
    STALE = "stale"  # its message was already final: nothing changed
    UNMATCHED = "unmatched"  # no usable result row for it (yet); rematch may apply it later
    PROGRESS = "progress"  # a non-final status: not stored, nothing to apply
    DUPLICATE = "duplicate"  # the same receipt was received before: ignored


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """One provider status report, normalised. At least one of the two ids is set."""

    status: ReceiptStatus
    provider_status: str  # the provider's own word for it: "undelivered", "DELIVRD", ...
    provider_message_id: str = ""  # the id the provider returned on send (MessageSid, BizId, sid)
    message_id: str = ""  # reach's message id, when the callback carries it
    error_code: str = ""
    error: str = ""
    reported_at: int = 0  # ms; when the sender saw the outcome, 0 = not given
    # The recipient's phone digits, only to tell apart the messages of one batch send that
    # share a provider id (Aliyun SendBatchSms: one BizId for up to 100 numbers). Not stored.
    recipient: str = dataclasses.field(default="", repr=False)

    def digest(self) -> str:
        """Identity of the report. Times are left out so a provider's re-send is a duplicate."""
        parts = (self.provider_message_id, self.message_id, self.recipient, self.provider_status)
        text = "\x1f".join((*parts, self.error_code))
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptResult:
    receipt: Receipt
    outcome: Outcome
    platform: str = ""  # of the matched result row, "" when none matched
    message_id: str = ""  # reach's id of the matched message, "" when none matched


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    """A result row a receipt may be about: the highest attempt of its message."""

    message_id: str
    attempt: int
    user_id: str
    platform: str
    status: str
    rule_id: str = ""
    channel: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class _Stored:
    """An unmatched receipt read back for rematching."""

    provider: str
    digest: str  # as stored: the recipient is not, so it cannot be recomputed
    receipt: Receipt
    received_at: int


async def _record_once(cur: Any, provider: str, final: list[Receipt], now_ms: int) -> list[ReceiptResult]:
    fresh = await _claim(cur, provider, final, now_ms)
    applied = await _apply(cur, provider, fresh, now_ms)
    await _set_outcomes(cur, provider, [(r.receipt.digest(), r.outcome) for r in applied])
    return applied


class ReceiptStore:
    """Stores and applies receipts. Safe to run concurrently with itself, in several API
    processes, and with the worker's result upserts."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def record(self, provider: str, receipts: Sequence[Receipt], now_ms: int) -> list[ReceiptResult]:
        """Deduplicate, store and apply one callback's receipts in one transaction.

        Returns one result per receipt, in order. A crash before the commit
        stores nothing, so the provider's retry is applied as new. A transaction
        rolled back for a deadlock or a write conflict is run again, up to
        ``MAX_TRANSACTION_TRIES`` times in all; then the error is raised.
        """
        firsts = _first_of_each(receipts)
        final = [receipts[i] for i in firsts.values() if receipts[i].status is not ReceiptStatus.PROGRESS]
        applied: list[ReceiptResult] = await in_transaction(
            self.pool,
            lambda _conn, cur: _record_once(cur, provider, final, now_ms),
            RETRYABLE_ERRORS,
            MAX_TRANSACTION_TRIES,
        )
        by_digest = {result.receipt.digest(): result for result in applied}
        return [_result_for(index, receipt, firsts, by_digest) for index, receipt in enumerate(receipts)]

    async def rematch(self, now_ms: int, window_ms: int, limit: int = 500) -> list[tuple[str, ReceiptResult]]:
        """Apply unmatched receipts received in the last ``window_ms`` whose result row now exists.

        Returns (provider, result) for each receipt that found its row. A
        receipt that needed its recipient to be told apart from the rest of a
        batch stays unmatched: the recipient is not stored.
        """
        done: list[tuple[str, ReceiptResult]] = []
        for provider, items in _by_provider(await self._unmatched(now_ms - window_ms, limit)):
            async with self.pool.acquire() as conn, conn.cursor() as cur:
                rows = await _find_rows(cur, provider, [item.receipt for item in items])
                for item, row in zip(items, rows, strict=True):
                    usable = _usable(row)
                    result = None if usable is None else await _rematch_one(conn, cur, item, usable)
                    if result is not None:
                        done.append((provider, result))
        return done

    async def _unmatched(self, since_ms: int, limit: int) -> list[_Stored]:
        # Newest first: receipts that never match must not crowd out the ones that will.
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT provider, receipt_hash, status, provider_status, provider_message_id, message_id, "
                "error_code, error, reported_at, received_at FROM receipts "
                "WHERE outcome = %s AND received_at >= %s ORDER BY received_at DESC LIMIT %s",
                [Outcome.UNMATCHED.value, since_ms, limit],
            )
            rows = await cur.fetchall()
        return [
            _Stored(provider, digest, Receipt(ReceiptStatus(status), *fields), received)
            for provider, digest, status, *fields, received in rows
        ]


# --- recording --------------------------------------------------------------------------------


def _first_of_each(receipts: Sequence[Receipt]) -> dict[str, int]:
    """Digest -> index of its first copy in ``receipts``."""
    firsts: dict[str, int] = {}
    for index, receipt in enumerate(receipts):
        firsts.setdefault(receipt.digest(), index)
    return firsts


def _result_for(
    index: int, receipt: Receipt, firsts: dict[str, int], applied: dict[str, ReceiptResult]
) -> ReceiptResult:
    if receipt.status is ReceiptStatus.PROGRESS:
        return ReceiptResult(receipt, Outcome.PROGRESS)
    digest = receipt.digest()
    result = applied.get(digest)
    # Only the first copy within one callback counts; a later copy, or a receipt an
    # earlier callback stored, is a duplicate.
    if result is None or firsts[digest] != index:
        return ReceiptResult(receipt, Outcome.DUPLICATE)
    return result


async def _claim(cur: Any, provider: str, receipts: list[Receipt], now_ms: int) -> list[Receipt]:
    """Insert the receipts not seen before and return them (the others are duplicates).

    The insert keeps a row already present as it is (``ON DUPLICATE KEY UPDATE``
    with a no-op: INSERT IGNORE without its warnings, and without ignoring other
    errors). It does not say which rows it inserted, so every row carries this
    call's random ``claim`` and the ones bearing it are read back. Inside the
    caller's transaction a concurrent copy of the same receipt waits on the row
    lock, then finds the row present.
    """
    if not receipts:
        return []
    claim = secrets.token_hex(8)
    # Key order, so two callbacks sharing receipts take their row locks in the same order.
    receipts = sorted(receipts, key=Receipt.digest)
    rows = [_receipt_row(provider, claim, receipt, now_ms) for receipt in receipts]
    marks = ",".join([f"({_marks(rows[0])})"] * len(rows))
    await cur.execute(
        f"INSERT INTO receipts ({_COLUMNS}) VALUES {marks} ON DUPLICATE KEY UPDATE claim = claim",
        [v for r in rows for v in r],
    )
    digests = [receipt.digest() for receipt in receipts]
    await cur.execute(
        "SELECT receipt_hash FROM receipts "
        f"WHERE provider = %s AND claim = %s AND receipt_hash IN ({_marks(digests)})",
        [provider, claim, *digests],
    )
    mine = {digest for (digest,) in await cur.fetchall()}
    return [receipt for receipt in receipts if receipt.digest() in mine]


_COLUMNS = (
    "provider, receipt_hash, claim, status, provider_status, provider_message_id, message_id, "
    "error_code, error, reported_at, received_at, outcome"
)


def _receipt_row(provider: str, claim: str, receipt: Receipt, now_ms: int) -> tuple[Any, ...]:
    return (
        provider,
        receipt.digest(),
        claim,
        receipt.status.value,
        receipt.provider_status[:32],
        receipt.provider_message_id[:256],
        receipt.message_id[:64],
        receipt.error_code[:64],
        receipt.error[:MAX_ERROR_LENGTH],
        receipt.reported_at,
        now_ms,
        Outcome.UNMATCHED.value,  # until _set_outcomes says otherwise, in the same transaction
    )


async def _apply(cur: Any, provider: str, receipts: list[Receipt], now_ms: int) -> list[ReceiptResult]:
    found = [
        (r, _usable(row)) for r, row in zip(receipts, await _find_rows(cur, provider, receipts), strict=True)
    ]
    results = [ReceiptResult(receipt, Outcome.UNMATCHED) for receipt, row in found if row is None]
    # Row-key order: two callbacks moving the same messages lock their rows in the same order
    # instead of deadlocking on each other.
    delivered: list[_Row] = []
    for receipt, row in sorted(((r, w) for r, w in found if w is not None), key=_row_key):
        moved = await _move(cur, row, receipt, receipt.reported_at or now_ms)
        results.append(_moved(receipt, row, moved))
        if moved and receipt.status is ReceiptStatus.DELIVERED:
            delivered.append(row)
    # After every result row, not between them: a counter locked in the middle would be held
    # while this transaction waits for the next result row, in no order shared with others.
    await _count_task_deliveries(cur, delivered)
    return results


def _usable(row: _Row | None) -> _Row | None:
    """The row a receipt can be applied to now; None (unmatched, rematched later) while the
    message's latest attempt is ``retrying``: the receipt is most likely about the next attempt,
    whose row the worker has not written yet."""
    return None if row is None or row.status == WAITING else row


def _row_key(found: tuple[Receipt, _Row]) -> tuple[str, int]:
    return found[1].message_id, found[1].attempt


async def _move(cur: Any, row: _Row, receipt: Receipt, at_ms: int) -> bool:
    """Move one result row forward; False when it is not (or no longer) in a movable state."""
    if row.status not in MOVABLE:
        return False
    failed = receipt.status is ReceiptStatus.FAILED
    await cur.execute(
        "UPDATE delivery_results SET status = %s, receipt_at = %s, "
        "error_code = IF(%s, %s, error_code), error = IF(%s, %s, error) "
        f"WHERE message_id = %s AND attempt = %s AND status IN ({_marks(MOVABLE)})",
        [
            receipt.status.value,
            at_ms,
            failed,
            receipt.error_code[:64],
            failed,
            receipt.error[:MAX_ERROR_LENGTH],
            row.message_id,
            row.attempt,
            *MOVABLE,
        ],
    )
    return bool(cur.rowcount)


async def _count_task_deliveries(cur: Any, delivered: Sequence[_Row]) -> None:
    """Reach task messages confirmed delivered add to their tasks' ``delivered`` counts, in
    the transaction that moved their rows (so a receipt applied once counts once). One
    statement, in key order, so concurrent transactions lock the counters in the same order."""
    counts = collections.Counter(
        (task_no, row.channel) for row in delivered if (task_no := task_no_of(row.rule_id)) is not None
    )
    if not counts:
        return
    keys = sorted(counts)
    marks = ",".join(["(%s, %s, 'delivered', %s)"] * len(keys))
    await cur.execute(
        f"INSERT INTO task_counts (task_no, channel, status, n) VALUES {marks} "
        "ON DUPLICATE KEY UPDATE n = n + VALUES(n)",
        [v for key in keys for v in (*key, counts[key])],
    )


def _moved(receipt: Receipt, row: _Row, moved: bool) -> ReceiptResult:
    if not moved:
        return ReceiptResult(receipt, Outcome.STALE, row.platform, row.message_id)
    outcome = Outcome.DELIVERED if receipt.status is ReceiptStatus.DELIVERED else Outcome.FAILED
    return ReceiptResult(receipt, outcome, row.platform, row.message_id)


async def _set_outcomes(cur: Any, provider: str, outcomes: Sequence[tuple[str, Outcome]]) -> None:
    groups: dict[str, list[str]] = {}
    for digest, outcome in outcomes:
        stored = "applied" if outcome in (Outcome.DELIVERED, Outcome.FAILED) else outcome.value
        groups.setdefault(stored, []).append(digest)
    groups.pop(Outcome.UNMATCHED.value, None)  # inserted as unmatched already
    for stored, digests in groups.items():
        # FORCE INDEX: on a table it believes small the optimizer scans the whole primary key
        # instead, and under REPEATABLE READ that scan locks every row it passes, other
        # callbacks' uncommitted receipts included: a deadlock with any of them. Key lookups
        # lock only this transaction's own rows, which it holds already.
        await cur.execute(
            "UPDATE receipts FORCE INDEX (PRIMARY) SET outcome = %s "
            f"WHERE provider = %s AND receipt_hash IN ({_marks(digests)})",
            [stored, provider, *digests],
        )


# --- rematching -------------------------------------------------------------------------------


def _by_provider(pending: list[_Stored]) -> list[tuple[str, list[_Stored]]]:
    groups: dict[str, list[_Stored]] = {}
    for item in pending:
        groups.setdefault(item.provider, []).append(item)
    return list(groups.items())


async def _rematch_one(conn: Any, cur: Any, item: _Stored, row: _Row) -> ReceiptResult | None:
    """Apply one unmatched receipt under its row lock; None when another process got there first."""
    await conn.begin()
    try:
        await cur.execute(
            "SELECT outcome FROM receipts WHERE provider = %s AND receipt_hash = %s FOR UPDATE",
            [item.provider, item.digest],
        )
        current = await cur.fetchone()
        result = None
        if current is not None and current[0] == Outcome.UNMATCHED.value:
            moved = await _move(cur, row, item.receipt, item.receipt.reported_at or item.received_at)
            if moved and item.receipt.status is ReceiptStatus.DELIVERED:
                await _count_task_deliveries(cur, [row])
            result = _moved(item.receipt, row, moved)
            await _set_outcomes(cur, item.provider, [(item.digest, result.outcome)])
        await conn.commit()
        return result
    except BaseException:
        await conn.rollback()
        raise


# --- finding a receipt's result row -----------------------------------------------------------


async def _find_rows(cur: Any, provider: str, receipts: Sequence[Receipt]) -> list[_Row | None]:
    """Each receipt's result row: by the provider's message id, else by reach's message id.

    A provider id shared by several messages (one batch send) is resolved by the
    receipt's recipient against the users' stored phone numbers; a receipt that
    still matches no row, or several, gets None.
    """
    by_pmid = await _rows_by(cur, provider, "provider_message_id", {r.provider_message_id for r in receipts})
    by_mid = await _rows_by(cur, provider, "message_id", {r.message_id for r in receipts})
    phones = await _phones(cur, _shared_users(receipts, by_pmid))
    return [
        _pick(by_pmid.get(r.provider_message_id, []), r.recipient, phones)
        or _pick(by_mid.get(r.message_id, []), "", phones)
        for r in receipts
    ]


async def _rows_by(cur: Any, provider: str, column: str, keys: set[str]) -> dict[str, list[_Row]]:
    """This provider's result rows per ``column`` value: the highest attempt of each message."""
    ordered = sorted(keys - {""})
    if not ordered:
        return {}
    await cur.execute(
        f"SELECT {column}, message_id, attempt, user_id, platform, status, rule_id, channel "
        "FROM delivery_results "
        f"WHERE provider = %s AND {column} IN ({_marks(ordered)}) ORDER BY attempt",
        [provider, *ordered],
    )
    latest: dict[tuple[str, str], _Row] = {}
    for key, *fields in await cur.fetchall():
        latest[(key, fields[0])] = _Row(*fields)  # ascending attempts: the highest one stays
    grouped: dict[str, list[_Row]] = {}
    for (key, _), row in latest.items():
        grouped.setdefault(key, []).append(row)
    return grouped


def _shared_users(receipts: Sequence[Receipt], by_pmid: dict[str, list[_Row]]) -> set[str]:
    """Users of the rows that share a provider id with others, for receipts that name a recipient."""
    shared = [by_pmid.get(r.provider_message_id, []) for r in receipts if r.recipient]
    return {row.user_id for rows in shared if len(rows) > 1 for row in rows}


async def _phones(cur: Any, user_ids: set[str]) -> dict[str, str]:
    """User id -> the digits of the phone number in the user's stored contact."""
    if not user_ids:
        return {}
    ordered = sorted(user_ids)
    await cur.execute(
        f"SELECT user_id, contact FROM user_profiles WHERE user_id IN ({_marks(ordered)})", ordered
    )
    phones = {}
    for user_id, contact in await cur.fetchall():
        phone = _json_object(contact).get("phone")
        if isinstance(phone, str):
            phones[user_id] = digits(phone)
    return phones


def _pick(candidates: list[_Row], recipient: str, phones: dict[str, str]) -> _Row | None:
    if len(candidates) == 1:
        return candidates[0]
    if not recipient:
        return None
    matching = [row for row in candidates if same_number(phones.get(row.user_id, ""), recipient)]
    return matching[0] if len(matching) == 1 else None


def digits(phone: str) -> str:
    return "".join(ch for ch in phone if ch.isdigit())


def same_number(a: str, b: str) -> bool:
    """Whether two digit strings are one phone number, with or without its country code."""
    shorter, longer = sorted((a, b), key=len)
    return len(shorter) >= MIN_PHONE_DIGITS and longer.endswith(shorter)


def _json_object(raw: Any) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _marks(values: Sequence[Any]) -> str:
    return ",".join(["%s"] * len(values))
