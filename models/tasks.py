"""Reach tasks: an operator's send to an audience, now, at a time, at each recipient's
local time, or on a cron schedule.

:func:`validate_task` is the one validator of a task body (the API's JSON and the
CLI's YAML task file have the same shape). It is pure: everything it checks against
(the clock, the channels, the templates, the categories) is passed in, and it reports
every problem at once, one per field, as :class:`Problem` ``(field, message)``.

A task body::

    name: spring-sale                      # required, 1-128 characters
    comment: VIPs get the sale a day early
    category: marketing                    # one of REACH_CATEGORIES
    audience:                              # at least one of segments, lists, filter
      segments: [vip]
      lists: [3f1c9a0b7d2e4c51]            # ids returned by POST /v1/audiences
      filter: attributes.country == "DE"   # the rules' expression language
    content:                               # a template of the rule files ...
      template: welcome
      # ... or inline: title, text, html (sandboxed Jinja2, like rule templates)
      variables: {sale_url: "https://shop.example/sale"}   # as ``properties``
      # kind: upgrade   (inline: a pop-up asking to upgrade; optional minimum_version,
      #                  upgrade_url, platform as in rule templates)
    channels: [inbox, email]               # candidates; channel rules still apply
    priority: 5                            # 0..9
    schedule: {kind: at, at: "2026-12-24T09:00:00+01:00"}
    #  {kind: now} | {kind: local_time, date: 2026-12-24, time: "09:00"}
    #  | {kind: cron, cron: "0 9 * * 1", zone: Europe/Berlin, max_runs: 4}
    rate_per_minute: 6000                  # optional send rate
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from models import schedule as sched
from rules.audience import AudienceFilter
from rules.errors import ExpressionError, TemplateRenderError
from rules.model import DEFAULT_PRIORITY, KINDS, UPGRADE, Template
from rules.versions import version_key

MAX_NAME = 128
MAX_COMMENT = 1000
MAX_SEGMENTS = 50
MAX_LISTS = 20
MAX_RUNS = 10_000
LIST_ID = re.compile(r"[0-9a-f]{16}")
_KEYS = frozenset(
    {
        "name",
        "comment",
        "category",
        "audience",
        "content",
        "channels",
        "priority",
        "schedule",
        "rate_per_minute",
    }
)


class TaskStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # waiting for its (next) run
    RUNNING = "running"  # a run is expanding its audience onto the outbox
    PAUSED = "paused"  # nothing is planned or sent until resumed
    COMPLETED = "completed"  # every run planned every recipient
    CANCELLED = "cancelled"  # nothing more is planned or sent
    FAILED = "failed"  # a run could not go on (reason in the transitions)


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED})


class ScheduleKind(enum.StrEnum):
    NOW = "now"
    AT = "at"
    LOCAL_TIME = "local_time"
    CRON = "cron"


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class TaskSpecError(ValueError):
    """A task body was refused; ``problems`` has one entry per field at fault."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


@dataclasses.dataclass(frozen=True, slots=True)
class Audience:
    segments: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()
    filter: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Content:
    template: str = ""  # a rule-file template; empty when inline
    title: str = ""
    text: str = ""
    html: str = ""
    variables: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    kind: str = ""  # inline only: "" a message, "upgrade" a request to upgrade the app
    minimum_version: str = ""  # kind upgrade: the version to reach; "" the platform's configured one
    upgrade_url: str = ""  # kind upgrade: where; "" the platform's configured one
    platform: str = ""  # kind upgrade: whose minimum and URL; "" the recipient's app's

    def inline(self, task_no: int) -> Template | None:
        """The inline template of task ``task_no``, or None when a rule-file one is used."""
        if self.template:
            return None
        return Template(
            template_id(task_no),
            self.title,
            self.text,
            self.html,
            source=f"task {task_no}",
            kind=self.kind,
            minimum_version=self.minimum_version,
            upgrade_url=self.upgrade_url,
            platform=self.platform,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    kind: ScheduleKind
    at_ms: int = 0  # AT
    date: str = ""  # LOCAL_TIME: YYYY-MM-DD
    time: str = ""  # LOCAL_TIME: HH:MM[:SS]
    cron: str = ""  # CRON
    zone: str = ""  # CRON
    max_runs: int = 0  # CRON: 0 = until cancelled

    def local(self) -> tuple[dt.date, dt.time]:
        return dt.date.fromisoformat(self.date), dt.time.fromisoformat(self.time)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    category: str
    audience: Audience
    content: Content
    channels: tuple[str, ...]
    schedule: Schedule
    comment: str = ""
    priority: int = DEFAULT_PRIORITY
    rate_per_minute: int = 0  # 0 = as fast as the channels allow

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> TaskSpec:
        data = orjson.loads(raw)
        return cls(
            name=data["name"],
            category=data["category"],
            audience=Audience(
                tuple(data["audience"]["segments"]),
                tuple(data["audience"]["lists"]),
                data["audience"]["filter"],
            ),
            content=Content(**data["content"]),
            channels=tuple(data["channels"]),
            schedule=Schedule(**{**data["schedule"], "kind": ScheduleKind(data["schedule"]["kind"])}),
            comment=data["comment"],
            priority=data["priority"],
            rate_per_minute=data["rate_per_minute"],
        )


def template_id(task_no: int) -> str:
    """The template name an inline task template is known by (``task:<task_no>``)."""
    return f"task:{task_no}"


def rule_id(task_no: int) -> str:
    """The ``rule_id`` of a task's messages and results: ``task:<task_no>``."""
    return f"task:{task_no}"


def task_no_of(rule: str) -> int | None:
    """The task number of a message's ``rule_id``, or None for a trigger rule's message."""
    if not rule.startswith("task:"):
        return None
    digits = rule[5:]
    return int(digits) if digits.isdigit() else None


def body_hash(body: Mapping[str, Any]) -> str:
    """A digest of a request body, key order aside, for ``Idempotency-Key`` checks."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


# A recipient as templates see it when a task is validated; the API renders against it.
SAMPLE_RECIPIENT: Mapping[str, Any] = MappingProxyType(
    {
        "user_id": "u-sample-1",
        "event": "task",
        "event_id": "task:0:1",
        "attributes": {"first_name": "Ada", "country": "GB", "plan": "pro"},
        "properties": {},
        "task": {"task_no": 0, "name": "sample", "run": 1},
        "device": {},
        "upgrade": {
            "platform": "ios",
            "minimum_version": "1.9.0",
            "upgrade_url": "https://apps.example/reach",
        },
    }
)


@dataclasses.dataclass(frozen=True)
class ValidationContext:
    now_ms: int
    channels: Collection[str]
    templates: Mapping[str, Template]
    categories: Collection[str]


class _Checker:
    """Collects problems while reading a body; each reader returns a usable default."""

    def __init__(self, ctx: ValidationContext) -> None:
        self.ctx = ctx
        self.problems: list[Problem] = []

    def fail(self, field: str, message: str) -> None:
        self.problems.append(Problem(field, message))

    def text(self, data: Mapping[str, Any], key: str, field: str, limit: int, required: bool = False) -> str:
        value = data.get(key, "")
        if not isinstance(value, str):
            self.fail(field, "must be a string")
            return ""
        if required and not value.strip():
            self.fail(field, "is required")
        elif len(value) > limit:
            self.fail(field, f"is {len(value)} characters; at most {limit}")
        return value

    def strings(self, data: Mapping[str, Any], key: str, field: str, limit: int) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(field, "must be a list of non-empty strings")
            return ()
        if len(value) > limit:
            self.fail(field, f"has {len(value)} entries; at most {limit}")
        return tuple(dict.fromkeys(value))

    def integer(
        self, data: Mapping[str, Any], key: str, field: str, low: int, high: int, default: int
    ) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(field, f"must be an integer from {low} to {high}")
            return default
        return value


def validate_task(body: Any, ctx: ValidationContext) -> TaskSpec:
    """The task described by ``body``; raises :class:`TaskSpecError` with every problem."""
    if not isinstance(body, Mapping):
        raise TaskSpecError([Problem("", "a task is an object (JSON or YAML mapping)")])
    check = _Checker(ctx)
    for key in sorted(set(body) - _KEYS):
        check.fail(str(key), f"unknown field; known: {', '.join(sorted(_KEYS))}")
    spec = TaskSpec(
        name=check.text(body, "name", "name", MAX_NAME, required=True),
        comment=check.text(body, "comment", "comment", MAX_COMMENT),
        category=_category(check, body),
        audience=_audience(check, body.get("audience")),
        content=_content(check, body.get("content")),
        channels=_channels(check, body),
        priority=check.integer(body, "priority", "priority", 0, 9, DEFAULT_PRIORITY),
        schedule=_schedule(check, body.get("schedule")),
        rate_per_minute=check.integer(body, "rate_per_minute", "rate_per_minute", 1, 10_000_000, 0)
        if "rate_per_minute" in body
        else 0,
    )
    if check.problems:
        raise TaskSpecError(check.problems)
    return spec


def _category(check: _Checker, body: Mapping[str, Any]) -> str:
    value = body.get("category", "")
    if value not in check.ctx.categories:
        check.fail("category", f"must be one of: {', '.join(sorted(check.ctx.categories))}")
        return ""
    return str(value)


def _mapping(check: _Checker, value: Any, field: str, keys: frozenset[str]) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        check.fail(field, "is required: an object" if value is None else "must be an object")
        return None
    for key in sorted(set(value) - keys):
        check.fail(f"{field}.{key}", f"unknown field; known: {', '.join(sorted(keys))}")
    return value


def _audience(check: _Checker, value: Any) -> Audience:
    data = _mapping(check, value, "audience", frozenset({"segments", "lists", "filter"}))
    if data is None:
        return Audience()
    audience = Audience(
        segments=check.strings(data, "segments", "audience.segments", MAX_SEGMENTS),
        lists=check.strings(data, "lists", "audience.lists", MAX_LISTS),
        filter=check.text(data, "filter", "audience.filter", 2000),
    )
    for list_id in audience.lists:
        if not LIST_ID.fullmatch(list_id):
            check.fail("audience.lists", f"{list_id!r} is not an audience list id (16 hex digits)")
    if audience.filter:
        try:
            AudienceFilter(audience.filter)
        except ExpressionError as exc:
            check.fail("audience.filter", str(exc))
    if not (audience.segments or audience.lists or audience.filter):
        check.fail("audience", "name segments, lists or a filter (a filter alone ranges over every profile)")
    return audience


def _content(check: _Checker, value: Any) -> Content:
    keys = frozenset({"template", "title", "text", "html", "variables", *_UPGRADE_KEYS})
    data = _mapping(check, value, "content", keys)
    if data is None:
        return Content()
    variables = data.get("variables", {})
    if not isinstance(variables, Mapping):
        check.fail("content.variables", "must be an object")
        variables = {}
    content = Content(
        template=check.text(data, "template", "content.template", 128),
        title=check.text(data, "title", "content.title", 512),
        text=check.text(data, "text", "content.text", 64 * 1024),
        html=check.text(data, "html", "content.html", 256 * 1024),
        variables=dict(variables),
        **{key: check.text(data, key, f"content.{key}", 2048).strip() for key in _UPGRADE_KEYS},
    )
    _check_template(check, content)
    _check_upgrade(check, content)
    return content


_UPGRADE_KEYS = ("kind", "minimum_version", "upgrade_url", "platform")


def _check_upgrade(check: _Checker, content: Content) -> None:
    if content.kind not in KINDS:
        check.fail("content.kind", f"must be {UPGRADE!r} or left out")
    if content.kind and content.template:
        check.fail("content.kind", "is for inline content; a rule-file template has its own kind")
    for key in _UPGRADE_KEYS[1:]:
        if getattr(content, key) and content.kind != UPGRADE:
            check.fail(f"content.{key}", f"is for kind {UPGRADE!r}")
    if content.minimum_version and version_key(content.minimum_version) is None:
        check.fail("content.minimum_version", "is not a version (e.g. 1.9.0)")
    if content.upgrade_url and not content.upgrade_url.startswith(("https://", "http://")):
        check.fail("content.upgrade_url", "must be an http(s) URL")


def _check_template(check: _Checker, content: Content) -> None:
    if content.template and (content.title or content.text or content.html):
        check.fail("content", "give either template or inline title/text/html, not both")
        return
    if content.template:
        template = check.ctx.templates.get(content.template)
        if template is None:
            check.fail(
                "content.template", f"unknown template; loaded: {', '.join(sorted(check.ctx.templates))}"
            )
            return
    elif not content.text.strip():
        check.fail("content", "name a template, or give an inline text (and a title, html)")
        return
    else:
        try:
            template = Template("task", content.title, content.text, content.html)
        except Exception as exc:  # a Jinja2 syntax error names its line
            check.fail("content", f"template syntax: {exc}")
            return
    for error in template.render_errors({**SAMPLE_RECIPIENT, "properties": dict(content.variables)}):
        if not _per_recipient(error):
            check.fail(f"content.{error.field}", f"rendering a sample recipient: {_reason(error)}")


def _per_recipient(error: TemplateRenderError) -> bool:
    """A profile attribute the sample recipient lacks: recipients differ, and one without it
    fails at send time (``template_variable_missing``). A missing task variable is the task's
    own mistake and is refused."""
    return error.missing_variable.startswith("attributes.")


def _reason(error: TemplateRenderError) -> str:
    return error.reason


def _channels(check: _Checker, body: Mapping[str, Any]) -> tuple[str, ...]:
    channels = check.strings(body, "channels", "channels", 16)
    if not channels and "channels" not in body:
        check.fail("channels", "is required: the candidate channels, in preference order")
    unknown = [c for c in channels if c not in check.ctx.channels]
    if unknown:
        check.fail("channels", f"unknown {unknown}; configured: {', '.join(sorted(check.ctx.channels))}")
    return channels


def _schedule(check: _Checker, value: Any) -> Schedule:
    keys = frozenset({"kind", "at", "date", "time", "cron", "zone", "max_runs"})
    data = _mapping(check, value, "schedule", keys)
    if data is None:
        return Schedule(ScheduleKind.NOW)
    kind = data.get("kind")
    reader = _SCHEDULE_READERS.get(str(kind))
    if reader is None:
        check.fail("schedule.kind", f"must be one of: {', '.join(k.value for k in ScheduleKind)}")
        return Schedule(ScheduleKind.NOW)
    return reader(check, data)


def _now(_check: _Checker, _data: Mapping[str, Any]) -> Schedule:
    return Schedule(ScheduleKind.NOW)


def _at(check: _Checker, data: Mapping[str, Any]) -> Schedule:
    at_ms = parse_instant(data.get("at"))
    if at_ms is None:
        check.fail("schedule.at", "must be an RFC 3339 time with an offset, or epoch milliseconds")
        return Schedule(ScheduleKind.AT)
    if at_ms < check.ctx.now_ms:
        check.fail("schedule.at", "is in the past")
    return Schedule(ScheduleKind.AT, at_ms=at_ms)


def _local_time(check: _Checker, data: Mapping[str, Any]) -> Schedule:
    date, wall = str(data.get("date", "")), str(data.get("time", ""))
    try:
        parsed_date = dt.date.fromisoformat(date)
    except ValueError:
        check.fail("schedule.date", "must be a date, YYYY-MM-DD")
        parsed_date = None
    try:
        parsed_time = dt.time.fromisoformat(wall)
        if parsed_time.tzinfo is not None:
            raise ValueError("a wall-clock time has no offset")
    except ValueError:
        check.fail("schedule.time", "must be a wall-clock time without offset, HH:MM or HH:MM:SS")
        parsed_time = None
    if parsed_date and parsed_time and sched.local_parts(parsed_date, parsed_time)[0] < check.ctx.now_ms:
        check.fail("schedule.date", f"{date} {wall} has already passed in some time zones")
    return Schedule(ScheduleKind.LOCAL_TIME, date=date, time=wall)


def _cron(check: _Checker, data: Mapping[str, Any]) -> Schedule:
    expression, zone = data.get("cron", ""), data.get("zone", "UTC")
    if not isinstance(zone, str) or not sched.valid_zone(zone):
        check.fail("schedule.zone", "must be an IANA time zone name, e.g. Europe/Berlin")
        zone = "UTC"
    if not isinstance(expression, str):
        expression = ""
    try:
        sched.cron_next(expression, zone, check.ctx.now_ms)
    except (sched.CronSimError, ValueError, StopIteration) as exc:
        check.fail("schedule.cron", f"not a cron expression: {exc or 'it never matches'}")
    runs = check.integer(data, "max_runs", "schedule.max_runs", 1, MAX_RUNS, 0) if "max_runs" in data else 0
    return Schedule(ScheduleKind.CRON, cron=expression, zone=zone, max_runs=runs)


_SCHEDULE_READERS: dict[str, Callable[[_Checker, Mapping[str, Any]], Schedule]] = {
    ScheduleKind.NOW.value: _now,
    ScheduleKind.AT.value: _at,
    ScheduleKind.LOCAL_TIME.value: _local_time,
    ScheduleKind.CRON.value: _cron,
}


def parse_instant(value: Any) -> int | None:
    """Epoch ms from an RFC 3339 string with offset (or ``Z``), or an integer of epoch ms."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 10**11 else None  # seconds would be 1970: refused
    if isinstance(value, dt.datetime):  # YAML reads unquoted timestamps itself
        return int(value.timestamp() * 1000) if value.tzinfo else None
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(parsed.timestamp() * 1000) if parsed.tzinfo else None


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedRun:
    run_no: int
    due_at: int  # ms


def first_runs(schedule: Schedule, now_ms: int) -> list[PlannedRun]:
    """The runs stored when a task is created: one for now or at, one per part for a
    local-time task (see :func:`models.schedule.local_parts`), the first for a cron task
    (each cron run adds the next when it starts)."""
    if schedule.kind is ScheduleKind.NOW:
        return [PlannedRun(1, now_ms)]
    if schedule.kind is ScheduleKind.AT:
        return [PlannedRun(1, schedule.at_ms)]
    if schedule.kind is ScheduleKind.LOCAL_TIME:
        return [PlannedRun(n, due) for n, due in enumerate(sched.local_parts(*schedule.local()), 1)]
    return [PlannedRun(1, sched.cron_next(schedule.cron, schedule.zone, now_ms))]


def next_cron_run(schedule: Schedule, run: PlannedRun) -> PlannedRun | None:
    """The cron run after ``run``, or None when the task has no more (not cron, max_runs)."""
    if schedule.kind is not ScheduleKind.CRON or (schedule.max_runs and run.run_no >= schedule.max_runs):
        return None
    return PlannedRun(run.run_no + 1, sched.cron_next(schedule.cron, schedule.zone, run.due_at))
