"""The crash harness's ledger: what became of every message, and whether that keeps the promise.

Pure: it compares three independent records of one run, namely the message ids
reach was asked to deliver, what each provider's server actually received, and
the latest delivery result reach recorded per message, and says which
messages were lost and how many were delivered more than once.

The promise checked (README, "Delivery guarantees"):

- every message is delivered, or recorded ``failed`` or ``unknown``;
- a message recorded ``sent`` was received by its provider;
- copies beyond the first reach a non-idempotent provider no more often than
  reach recorded an outcome as ``unknown`` (a send interrupted by the crash).

An idempotent provider deduplicates by key, so repeats on its wire are counted
(``resent``) but are no breach.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True, slots=True)
class Expected:
    message_id: str
    channel: str
    idempotent: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    total: int
    delivered: int
    recorded_failed: int
    recorded_unknown: int
    duplicates: int  # copies beyond the first that reached a non-idempotent provider
    resent: int  # repeats an idempotent provider absorbed
    lost: tuple[str, ...]  # neither delivered nor recorded failed/unknown
    false_sent: tuple[str, ...]  # recorded sent, never received

    @property
    def ok(self) -> bool:
        return not self.lost and not self.false_sent and self.duplicates <= self.recorded_unknown

    def summary(self) -> str:
        state = "OK" if self.ok else "BROKEN"
        return (
            f"{state}: {self.total} messages, {self.delivered} delivered, {self.recorded_failed} failed,"
            f" {self.recorded_unknown} unknown, {len(self.lost)} lost, {len(self.false_sent)} recorded"
            f" sent but not received, {self.duplicates} duplicates (allowed {self.recorded_unknown}),"
            f" {self.resent} resends absorbed by an idempotent provider"
        )


def judge(
    expected: Iterable[Expected],
    received: Mapping[str, int],
    statuses: Mapping[str, str],
) -> Verdict:
    """``received``: copies each provider server got per message id (wire count);
    ``statuses``: the latest recorded status per message id."""
    delivered = failed = unknown = duplicates = resent = total = 0
    lost: list[str] = []
    false_sent: list[str] = []
    for message in expected:
        total += 1
        copies = received.get(message.message_id, 0)
        status = statuses.get(message.message_id)
        extra = max(0, copies - 1)
        if message.idempotent:
            resent += extra
        else:
            duplicates += extra
        if status == "unknown":
            unknown += 1
        if copies:
            delivered += 1
        elif status == "failed":
            failed += 1
        elif status == "sent":
            false_sent.append(message.message_id)
        elif status != "unknown":
            lost.append(message.message_id)
    return Verdict(total, delivered, failed, unknown, duplicates, resent, tuple(lost), tuple(false_sent))


def latest_statuses(rows: Iterable[tuple[str, int, str]]) -> dict[str, str]:
    """``(message_id, attempt, status)`` rows -> the status of each message's highest attempt."""
    best: dict[str, tuple[int, str]] = {}
    for message_id, attempt, status in rows:
        if message_id not in best or attempt >= best[message_id][0]:
            best[message_id] = (attempt, status)
    return {message_id: status for message_id, (_, status) in best.items()}
