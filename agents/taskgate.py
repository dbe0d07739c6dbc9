"""The send-time check of task messages: cancelled or paused tasks send nothing more.

The channel agent calls :meth:`TaskGate.screen` on each batch just before sending.
It costs one indexed read of the batch's tasks' statuses (a batch usually holds one
task), never one per message, and it reads MariaDB, so it holds after Redis lost its
data. Per message the decision is :func:`verdict`:

- the task is cancelled, failed or gone: the message gets a result ``suppressed``
  with the reason (``task_cancelled``, ...) and is marked done;
- the task is paused: the message waits in the deferred queue and is checked again
  ``task_pause_recheck_ms`` later (after a resume it goes);
- otherwise it is sent.

The gate also lends the channel agent the inline templates of the batch's tasks
(:meth:`templates`), and adds each batch's final outcomes to ``task_counts``
(:meth:`count`).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from agents.plan import result_for
from channels.base import Outcome
from models.messages import DeliveryResult, DeliveryStatus, ReachMessage
from models.tasks import TaskStatus, task_no_of
from models.taskstore import TaskStore
from rules.model import Template

#: outcomes that end a message, counted per task and channel
COUNTED = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN, DeliveryStatus.SUPPRESSED}
)
MAX_CACHED_TEMPLATES = 1024


class Verdict(enum.Enum):
    SEND = "send"
    HOLD = "hold"
    DROP = "drop"


def verdict(status: TaskStatus | None) -> tuple[Verdict, str]:
    """What to do with a message of a task in ``status`` (None: the task is gone), and why."""
    if status is None:
        return Verdict.DROP, "task_missing"
    if status is TaskStatus.PAUSED:
        return Verdict.HOLD, "task_paused"
    if status in (TaskStatus.CANCELLED, TaskStatus.FAILED):
        return Verdict.DROP, f"task_{status.value}"
    return Verdict.SEND, ""


class Batch(Protocol):
    """The parts of the channel agent's ``BatchOutcome`` the gate writes to."""

    results: list[DeliveryResult]
    deferred: list[tuple[int, bytes]]
    done_ids: list[str]
    handled: set[str]


class TaskGate:
    def __init__(self, store: TaskStore, pause_recheck_ms: int = 2000, counter: Any = None) -> None:
        self.store = store
        self.pause_recheck_ms = pause_recheck_ms
        self.counter = counter  # reach_task_messages{channel, status}, or None
        self._inline: dict[str, Template] = {}
        # task number -> its inline template (None: it uses a rule-file one), oldest first
        self._tasks: collections.OrderedDict[int, Template | None] = collections.OrderedDict()

    async def screen(self, messages: Sequence[ReachMessage], now: int, batch: Batch) -> list[ReachMessage]:
        """The messages to send now; the others are held or suppressed into ``batch``."""
        tasks = {n for n in (task_no_of(m.rule_id) for m in messages) if n is not None}
        if not tasks:
            return list(messages)
        statuses = await self.store.statuses(tasks)
        await self._load_templates(tasks - self._tasks.keys())
        send = []
        for message in messages:
            number = task_no_of(message.rule_id)
            decision, reason = verdict(statuses.get(number)) if number is not None else (Verdict.SEND, "")
            if decision is Verdict.SEND:
                send.append(message)
            elif decision is Verdict.HOLD:
                self._hold(message, now, batch)
            else:
                self._drop(message, reason, now, batch)
        return send

    def _hold(self, message: ReachMessage, now: int, batch: Batch) -> None:
        when = now + self.pause_recheck_ms
        batch.deferred.append((when, message.replace(not_before=when).to_bytes()))
        batch.handled.add(message.message_id)

    def _drop(self, message: ReachMessage, reason: str, now: int, batch: Batch) -> None:
        outcome = Outcome.permanent(reason, "the task stopped before this message was sent; not sent")
        batch.results.append(result_for(message, outcome, DeliveryStatus.SUPPRESSED, now, now))
        batch.done_ids.append(message.message_id)
        batch.handled.add(message.message_id)

    async def _load_templates(self, tasks: set[int]) -> None:
        """Remember the inline templates of tasks not seen yet (a task's content never
        changes); the least recently loaded are forgotten past MAX_CACHED_TEMPLATES and
        loaded again if one of their messages comes back."""
        if not tasks:
            return
        specs = await self.store.specs(tasks)
        for number in tasks:
            spec = specs.get(number)
            template = spec.content.inline(number) if spec is not None else None
            self._tasks[number] = template
            if template is not None:
                self._inline[template.id] = template
        while len(self._tasks) > MAX_CACHED_TEMPLATES:
            number, template = self._tasks.popitem(last=False)
            if template is not None:
                self._inline.pop(template.id, None)

    def templates(self, rule_templates: Mapping[str, Template]) -> Mapping[str, Template]:
        """The rule files' templates and the loaded tasks' inline ones (``task:<no>``)."""
        if not self._inline:
            return rule_templates
        return collections.ChainMap(self._inline, dict(rule_templates))

    async def count(self, results: Sequence[DeliveryResult]) -> None:
        """Add a batch's final task outcomes to ``task_counts``: one statement per batch."""
        sums: collections.Counter[tuple[int, str, str]] = collections.Counter()
        for result in results:
            number = task_no_of(result.rule_id)
            if number is not None and result.status in COUNTED:
                sums[(number, result.channel, str(result.status))] += 1
        if not sums:
            return
        await self.store.add_counts([(*key, n) for key, n in sums.items()])
        if self.counter is not None:
            for (_number, channel, status), n in sums.items():
                self.counter.labels(channel, status).inc(n)
