"""Pure decisions of the task runner: who a run reaches, with which messages, how many now.

Nothing here does I/O; :mod:`agents.tasks` reads the pages and produces the frames.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from agents.plan import carried_contact, reachable_channels
from channels.routing import WeightedChooser
from models import schedule as sched
from models.messages import ReachMessage, message_id_for
from models.profiles import app_version_for
from models.taskruns import Recipient
from models.tasks import ScheduleKind, TaskSpec, rule_id, template_id
from rules.audience import AudienceFilter
from rules.engine import RuleEngine
from rules.model import fallback_channels


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What every recipient of one run shares."""

    task_no: int
    run_no: int
    due_at: int
    spec: TaskSpec
    default_zone: str
    filter: AudienceFilter | None
    parts: tuple[int, ...] = ()  # local-time tasks: the instants of every part

    @classmethod
    def of(
        cls, task_no: int, run_no: int, due_at: int, spec: TaskSpec, default_zone: str, grouped: bool = False
    ) -> RunPlan:
        """``grouped``: the run reads only its part's members (grouped by zone once, by
        :class:`PartAssigner`), so it checks no zone; otherwise a local-time run reads the
        whole audience and keeps the recipients whose zone falls into its part."""
        parts: tuple[int, ...] = ()
        if spec.schedule.kind is ScheduleKind.LOCAL_TIME and not grouped:
            parts = tuple(sched.local_parts(*spec.schedule.local()))
        audience_filter = AudienceFilter(spec.audience.filter) if spec.audience.filter else None
        return cls(task_no, run_no, due_at, spec, default_zone, audience_filter, parts)

    @property
    def template(self) -> str:
        return self.spec.content.template or template_id(self.task_no)


def due_at_for(plan: RunPlan, recipient: Recipient) -> int:
    """When this recipient's message is due: the run's time, or for a local-time task the
    instant the recipient's zone (profile, else the default) shows the wall-clock time."""
    if not plan.parts:
        return plan.due_at
    zone = sched.zone_or_default(recipient.timezone, plan.default_zone)
    return sched.local_instant(*plan.spec.schedule.local(), zone)


def chosen(plan: RunPlan, recipient: Recipient) -> bool:
    """Whether the run reaches ``recipient``: the filter matches and, for a local-time
    task, the recipient's zone falls into this run's part."""
    if plan.filter is not None and not plan.filter.matches(recipient.fact()):
        return False
    return not plan.parts or sched.part_of(due_at_for(plan, recipient), plan.parts) == plan.run_no


class PartAssigner:
    """The part (run number) of a local-time task each recipient belongs to: the part at
    their zone's instant (profile, else the default zone), worked out once per zone."""

    def __init__(self, spec: TaskSpec, default_zone: str) -> None:
        self.local = spec.schedule.local()
        self.parts = tuple(sched.local_parts(*self.local))
        self.default_zone = default_zone
        self.by_zone: dict[str, int] = {}

    def part(self, timezone: str) -> int:
        found = self.by_zone.get(timezone)
        if found is None:
            instant = sched.local_instant(*self.local, sched.zone_or_default(timezone, self.default_zone))
            found = self.by_zone[timezone] = sched.part_of(instant, self.parts)
        return found


def variables(plan: RunPlan, recipient: Recipient) -> dict[str, Any]:
    """A task template's context: the recipient's attributes, the task's variables as
    ``properties``, and the task itself."""
    return {
        "user_id": recipient.user_id,
        "event": "task",
        "event_id": f"task:{plan.task_no}:{plan.run_no}",
        "attributes": recipient.attributes,
        "properties": plan.spec.content.variables,
        "task": {"task_no": plan.task_no, "name": plan.spec.name, "run": plan.run_no},
        "device": {},
    }


def selection_fact(plan: RunPlan, recipient: Recipient, reachable: list[str]) -> dict[str, Any]:
    """What channel rules see of a task message (a trigger message's fields, ``event: task``)."""
    return {
        "rule_id": rule_id(plan.task_no),
        "template": plan.template,
        "priority": plan.spec.priority,
        "event": "task",
        "platform": "",
        "segments": list(recipient.segments),
        "reachable": reachable,
    }


def plan_recipient(
    plan: RunPlan,
    recipient: Recipient,
    engine: RuleEngine,
    choosers: Mapping[str, WeightedChooser],
    now_ms: int,
    selections: dict[Any, tuple[str, ...]] | None = None,
    platforms: Mapping[str, str] | None = None,
) -> list[ReachMessage]:
    """The recipient's messages: one per candidate channel the channel rules keep and a
    provider can address. Ids derive from (task, run, user, channel), so a page planned
    again after a crash makes the same messages, which the channel agent skips. Content
    is chosen for the app the profile last saw (on the channel's platform, when
    ``platforms`` binds it to one: see :func:`agents.plan.app_on_channel`)."""
    contact = recipient.contact
    reachable = reachable_channels(choosers, contact)
    fact = selection_fact(plan, recipient, reachable)
    context = variables(plan, recipient)
    also = fallback_channels(engine.rulebook.templates, plan.template)
    return [
        _message(plan, recipient, channel, choosers[channel], context, now_ms).replace(
            contact=carried_contact(choosers, channel, contact_of(recipient), also),
            **app_fields(recipient, (platforms or {}).get(channel, "")),
        )
        for channel in _selected(plan, fact, engine, selections)
        if channel in reachable
    ]


def app_fields(recipient: Recipient, channel_platform: str) -> dict[str, str]:
    """``app_platform`` and ``app_version`` of a task message: what the profile last saw."""
    platform, version = app_version_for(recipient.app_versions, channel_platform)
    return {"app_version": version, "app_platform": platform} if version else {}


def _selected(
    plan: RunPlan, fact: dict[str, Any], engine: RuleEngine, selections: dict[Any, tuple[str, ...]] | None
) -> tuple[str, ...]:
    """The channel rules' choice. It depends on the recipient only through ``segments`` and
    ``reachable`` (the rest is the task's), so one page asks the engine once per distinct
    pair instead of once per recipient."""
    if selections is None:
        return engine.select_channels(plan.spec.channels, fact)
    key = (tuple(fact["segments"]), tuple(fact["reachable"]))
    chosen_channels = selections.get(key)
    if chosen_channels is None:
        chosen_channels = selections[key] = engine.select_channels(plan.spec.channels, fact)
    return chosen_channels


def _message(
    plan: RunPlan,
    recipient: Recipient,
    channel: str,
    chooser: WeightedChooser,
    context: dict[str, Any],
    now_ms: int,
) -> ReachMessage:
    contact = contact_of(recipient)
    provider = chooser.choose(contact=contact).name
    key = f"{plan.run_no}:{recipient.user_id}"
    return ReachMessage(
        message_id=message_id_for(rule_id(plan.task_no), key, channel),
        user_id=recipient.user_id,
        rule_id=rule_id(plan.task_no),
        template=plan.template,
        channel=channel,
        provider=provider,
        priority=plan.spec.priority,
        event_id=f"task:{plan.task_no}:{plan.run_no}",
        event_name="task",
        event_ts=due_at_for(plan, recipient),  # end-to-end latency counts from the due time
        created_ts=now_ms,
        variables=context,
        contact=chooser.contact_for(contact),
        category=plan.spec.category,
        timezone=recipient.timezone,
    )


def contact_of(recipient: Recipient) -> dict[str, str]:
    return {k: v for k, v in recipient.contact.items() if isinstance(v, str)}


Records = dict[str, list[tuple[bytes | None, bytes]]]


class PageEncoder:
    """Plans and encodes a run's pages straight to outbox records: the same messages as
    :func:`plan_recipient` (a unit test holds them equal), without a ReachMessage per
    recipient. What a run's messages share is encoded once (the head per channel, the
    shared template context); what depends on a recipient's segments, reachable channels
    or zone is decided once per distinct value and cached. Per recipient only the id,
    user, provider, due time, contact and attributes are encoded: a few microseconds
    each instead of ~100 for the reference form (profiled)."""

    def __init__(
        self,
        plan: RunPlan,
        engine: RuleEngine,
        choosers: Mapping[str, WeightedChooser],
        platforms: Mapping[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.platforms = platforms or {}
        self.also = fallback_channels(engine.rulebook.templates, plan.template)
        self.engine = engine
        self.choosers = choosers
        self.rule = rule_id(plan.task_no)
        self.single = {name: c.providers[0].name for name, c in choosers.items() if len(c.providers) == 1}
        shared = {k: v for k, v in variables(plan, Recipient("")).items() if k not in _PER_USER}
        self.shared_context = orjson.dumps(shared)[1:-1]  # the object's members, no braces
        # message_id_for(rule, f"{run}:{user}", channel), with the constant prefix hashed once
        self.id_prefix = hashlib.blake2b(f"{self.rule}\x1f{plan.run_no}:".encode(), digest_size=12)
        self.id_suffix = {name: f"\x1f{name}".encode() for name in choosers}
        self.reach_cache: dict[frozenset[str], tuple[str, ...]] = {}
        self.prefixes: dict[tuple[str, str, int, str], bytes] = {}
        self.selections: dict[Any, tuple[str, ...]] = {}
        self.zone_due: dict[str, int] = {}

    def heads(self, now_ms: int) -> dict[str, bytes]:
        """Per channel, the JSON of the fields every message of the page shares, left open."""
        shared = {
            "rule_id": self.rule,
            "template": self.plan.template,
            "priority": self.plan.spec.priority,
            "event_id": f"task:{self.plan.task_no}:{self.plan.run_no}",
            "event_name": "task",
            "created_ts": now_ms,
            "platform": "",
            "attempt": 1,
            "not_before": 0,
            "category": self.plan.spec.category,
        }
        return {name: orjson.dumps({**shared, "channel": name})[:-1] + b"," for name in self.choosers}

    def page(self, recipients: Sequence[Recipient], now_ms: int) -> tuple[Records, int, int]:
        """The page's outbox records per channel, the recipients reached, the messages made."""
        heads = self.heads(now_ms)
        self.prefixes = {}  # they hold the page's created_ts
        records: Records = {name: [] for name in self.choosers}
        reached = made = 0
        for recipient in recipients:
            due = self._due(recipient)
            if due is None:
                continue
            reached += 1
            key = recipient.user_id.encode()
            for channel, value in self._encode(recipient, key, due, heads):
                records[channel].append((key, value))
                made += 1
        return {name: found for name, found in records.items() if found}, reached, made

    def _due(self, recipient: Recipient) -> int | None:
        """The recipient's due time, or None when this run does not reach them (the same
        decision as :func:`chosen`, with the zone's part looked up once per zone)."""
        plan = self.plan
        if plan.filter is not None and not plan.filter.matches(recipient.fact()):
            return None
        if not plan.parts:
            return plan.due_at
        due = self.zone_due.get(recipient.timezone)
        if due is None:
            due = self.zone_due[recipient.timezone] = due_at_for(plan, recipient)
        return due if sched.part_of(due, plan.parts) == plan.run_no else None

    def _encode(
        self, recipient: Recipient, key: bytes, due: int, heads: Mapping[str, bytes]
    ) -> list[tuple[str, bytes]]:
        contact = contact_of(recipient) if recipient.contact else _NO_CONTACT
        channels = self._channels(recipient, self._reachable(contact))
        if not channels:
            return []
        user_json = orjson.dumps(recipient.user_id)
        attributes = _dumps(recipient.attributes)
        out = []
        for channel in channels:
            provider = self.single.get(channel) or self.choosers[channel].choose(contact=contact).name
            digest = self.id_prefix.copy()  # message_id_for(rule, f"{run}:{user}", channel)
            digest.update(key)
            digest.update(self.id_suffix[channel])
            out.append((channel, b"".join((
                self._prefix(heads, channel, provider, due, recipient.timezone), user_json,
                b',"attributes":', attributes, b'},"message_id":"', binascii.hexlify(digest.digest()),
                b'","user_id":', user_json, b',"contact":', self._carried(channel, contact),
                self._app_fields(recipient, channel), b"}",
            ))))  # fmt: skip
        return out

    def _carried(self, channel: str, contact: Mapping[str, str]) -> bytes:
        return _dumps(carried_contact(self.choosers, channel, contact, self.also)) if contact else b"{}"

    def _prefix(self, heads: Mapping[str, bytes], channel: str, provider: str, due: int, zone: str) -> bytes:
        """A message up to its user: the head, what recipients of one channel, provider, due
        time and zone share, and the shared template context, left open before its user_id."""
        found = self.prefixes.get((channel, provider, due, zone))
        if found is None:
            found = self.prefixes[(channel, provider, due, zone)] = b"".join((
                heads[channel], b'"provider":', orjson.dumps(provider), b',"event_ts":', str(due).encode(),
                b',"timezone":', orjson.dumps(zone), b',"variables":{', self.shared_context, b',"user_id":',
            ))  # fmt: skip
        return found

    def _app_fields(self, recipient: Recipient, channel: str) -> bytes:
        """``,"app_version":...,"app_platform":...`` when the profile saw an app, else nothing."""
        if not recipient.app_versions:
            return b""
        fields = app_fields(recipient, self.platforms.get(channel, ""))
        return b"," + orjson.dumps(fields)[1:-1] if fields else b""

    def _channels(self, recipient: Recipient, reachable: tuple[str, ...]) -> tuple[str, ...]:
        """The channel rules' choice among the reachable channels, asked once per distinct
        (segments, reachable) pair (see :func:`_selected`)."""
        key = (recipient.segments, reachable)
        found = self.selections.get(key)
        if found is None:
            fact = selection_fact(self.plan, recipient, list(reachable))
            found = self.selections[key] = tuple(
                c for c in _selected(self.plan, fact, self.engine, None) if c in reachable
            )
        return found

    def _reachable(self, contact: Mapping[str, str]) -> tuple[str, ...]:
        key = frozenset(k for k, v in contact.items() if v) if contact else _NO_KEYS
        found = self.reach_cache.get(key)
        if found is None:
            found = self.reach_cache[key] = tuple(reachable_channels(self.choosers, contact))
        return found


_PER_USER = frozenset({"user_id", "attributes"})
_NO_KEYS: frozenset[str] = frozenset()
_NO_CONTACT: dict[str, str] = {}


def _dumps(value: Any) -> bytes:
    """orjson.dumps, skipping the call for the empty values most profiles have."""
    return _EMPTY_JSON[type(value)] if not value and type(value) in _EMPTY_JSON else orjson.dumps(value)


_EMPTY_JSON: dict[type, bytes] = {dict: b"{}", str: b'""', type(None): b"null"}


def plan_page(
    plan: RunPlan,
    page: Sequence[Recipient],
    engine: RuleEngine,
    choosers: Mapping[str, WeightedChooser],
    now_ms: int,
    platforms: Mapping[str, str] | None = None,
) -> tuple[list[ReachMessage], int]:
    """The messages of one audience page, and how many of its recipients the run reaches
    (the reference form of :class:`PageEncoder`)."""
    messages: list[ReachMessage] = []
    reached = 0
    selections: dict[Any, tuple[str, ...]] = {}
    for recipient in page:
        if chosen(plan, recipient):
            reached += 1
            messages += plan_recipient(plan, recipient, engine, choosers, now_ms, selections, platforms)
    return messages, reached


def page_allowance(rate_per_minute: int, started_at: int, now_ms: int, done: int, page_size: int) -> int:
    """How many recipients to read now: a full page without a rate; with one, what the
    rate has allowed since the run started, less what is done (at least one a minute's
    worth / 60 at the start, so a run never waits a whole minute for its first message)."""
    if rate_per_minute <= 0:
        return page_size
    allowed = max(1, rate_per_minute * max(0, now_ms - started_at) // 60_000 + max(1, rate_per_minute // 60))
    return max(0, min(page_size, allowed - done))
