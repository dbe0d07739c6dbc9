"""Reach task endpoints: create (validated, idempotent), list, show, cancel / pause / resume,
per-recipient outcomes, and audience uploads streamed into MariaDB.

The API only writes MariaDB; the worker's task runner picks due runs up from there and
the channel agent's task gate reads the status at send time, so a cancel answered here
stops every message not yet sent.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pathlib
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

import orjson
import structlog
import yaml
from fastapi import APIRouter, Header, Path, Query, Request, Response

from api.auth import Principal, TasksWriter
from api.errors import ApiError
from api.events import require_json
from api.receipts import read_limited
from api.resources import Lists, Tasks
from api.schemas import AUTHENTICATED, error_responses
from models.events import MAX_ID_LENGTH, EventError, refuse_duplicate_keys
from models.tasks import (
    FINAL_STATUSES,
    Problem,
    TaskSpec,
    TaskSpecError,
    TaskStatus,
    ValidationContext,
    body_hash,
    first_runs,
    validate_task,
)
from models.taskstore import (
    CreationInProgressError,
    IdempotencyConflictError,
    RunRow,
    TaskRow,
    TaskStore,
    TransitionRefusedError,
)
from reach.clock import Clock
from reach.settings import Settings
from rules.errors import RuleSetError
from rules.loader import RuleLimits, load_rulebook
from rules.model import Template

log = structlog.get_logger("reach.api.tasks")

MAX_TASK_BODY = 1 << 20
UPLOAD_CHUNK = 1000
TASK_NO = Path(ge=1, lt=2**63)
# Who acts through the key ("cli", an operator's name); key ids take 20 of the 128 characters.
ACTOR_HEADER = Header("", max_length=100, pattern=r"^[\w.@-]*$")
# From -> to for the operator's actions; the scheduler moves scheduled/running/completed.
# A completed task may still have messages waiting (throttled, retrying): cancelling or
# pausing it stops those.
ACTIONS: dict[str, tuple[tuple[TaskStatus, ...], TaskStatus]] = {
    "cancel": (
        (TaskStatus.SCHEDULED, TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.COMPLETED),
        TaskStatus.CANCELLED,
    ),
    "pause": ((TaskStatus.SCHEDULED, TaskStatus.RUNNING, TaskStatus.COMPLETED), TaskStatus.PAUSED),
    "resume": ((TaskStatus.PAUSED,), TaskStatus.RUNNING),
}


@dataclasses.dataclass(frozen=True)
class TaskChecks:
    """What a task body is validated against: the worker's channels, templates, categories."""

    channels: Collection[str]
    templates: Mapping[str, Template]
    categories: Collection[str]

    def context(self, now_ms: int) -> ValidationContext:
        return ValidationContext(now_ms, self.channels, self.templates, self.categories)


def checks_from(settings: Settings) -> TaskChecks:
    """Load the channels file and the rule directory the worker uses. Templates added to the
    rule files later are known here after a restart of the API."""
    channels = channel_names(settings.channels_file)
    limits = RuleLimits(settings.rules_max_file_bytes, settings.rules_max_total_bytes)
    try:
        templates: Mapping[str, Template] = load_rulebook(settings.rules_dir, channels, limits).templates
    except RuleSetError as exc:
        log.warning("tasks.rules_unavailable", error=str(exc)[:300])
        templates = {}
    return TaskChecks(channels, templates, settings.category_names)


def channel_names(path: pathlib.Path) -> list[str]:
    """The channels the worker's channels file defines. Only the names: the API holds no
    provider secrets, so ``${VAR}`` options are not expanded here."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    channels = data.get("channels") if isinstance(data, dict) else None
    return [str(name) for name in channels] if isinstance(channels, dict) else []


def router(checks: TaskChecks, clock: Clock) -> APIRouter:
    routes = APIRouter(tags=["tasks"], responses=error_responses(400, 404, 409, 413, 415, *AUTHENTICATED))

    @routes.post("/v1/tasks", status_code=201, summary="Create a reach task")
    async def create_task(
        request: Request,
        tasks: Tasks,
        lists: Lists,
        caller: TasksWriter,
        idempotency_key: str | None = Header(None, max_length=128),
        x_reach_actor: str = ACTOR_HEADER,
    ) -> Response:
        require_json(request)
        body = parse_body(await read_limited(request, MAX_TASK_BODY))
        now = clock.now_ms()
        spec = await validated(body, checks, lists, now)
        try:
            task_no, created = await tasks.create(
                spec,
                first_runs(spec.schedule, now),
                actor(caller, x_reach_actor),
                now,
                idempotency_key or "",
                body_hash(body),
            )
        except IdempotencyConflictError:
            raise ApiError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with another body"
            ) from None
        except CreationInProgressError:
            raise ApiError(
                409, "in_progress", "a request with this Idempotency-Key is still creating its task"
            ) from None
        return json_response(await task_view(tasks, task_no), 201 if created else 200)

    @routes.get("/v1/tasks", summary="Tasks, newest first")
    async def list_tasks(
        tasks: Tasks,
        _caller: TasksWriter,
        status: TaskStatus | None = None,
        kind: str = Query("", max_length=16, description="schedule kind: now, at, local_time, cron"),
        category: str = Query("", max_length=32),
        limit: int = Query(20, ge=1, le=200),
        cursor: str | None = None,
    ) -> Response:
        before = decode_task_cursor(cursor) if cursor else None
        rows = await tasks.page(limit, before, status.value if status else "", kind, category)
        shown = rows[:limit]
        more = len(rows) > limit
        next_cursor = f"{shown[-1].created_at}.{shown[-1].task_no}" if more else None
        return json_response({"items": [summary(t) for t in shown], "next_cursor": next_cursor})

    @routes.get("/v1/tasks/{task_no}", summary="A task: status, counts per channel, runs, next run")
    async def show_task(tasks: Tasks, _caller: TasksWriter, task_no: int = TASK_NO) -> Response:
        return json_response(await task_view(tasks, task_no))

    for action in ACTIONS:
        routes.add_api_route(
            f"/v1/tasks/{{task_no}}/{action}",
            _action_route(action, clock),
            methods=["POST"],
            summary=f"{action.title()} a task",
        )

    @routes.get("/v1/tasks/{task_no}/recipients", summary="Per-recipient outcomes, by user id")
    async def recipients(
        tasks: Tasks,
        _caller: TasksWriter,
        task_no: int = TASK_NO,
        limit: int = Query(100, ge=1, le=1000),
        cursor: str | None = None,
    ) -> Response:
        await existing(tasks, task_no)
        after = decode_recipient_cursor(cursor) if cursor else None
        rows = latest_attempts(await tasks.recipients(task_no, limit, after))
        shown = rows[:limit]
        more = len(rows) > limit
        next_cursor = f"{shown[-1]['user_id']}\x1f{shown[-1]['message_id']}".encode().hex() if more else None
        return json_response({"items": shown, "next_cursor": next_cursor})

    @routes.post(
        "/v1/audiences", status_code=201, summary="Upload an audience: CSV or JSON lines of user ids"
    )
    async def upload_audience(request: Request, lists: Lists, _caller: TasksWriter) -> Response:
        list_id = await lists.begin(clock.now_ms())
        try:
            await store_upload(
                lists, list_id, lines(request), is_csv(request.headers.get("content-type", ""))
            )
            members = await lists.complete(list_id)
        except BaseException:
            await lists.discard(list_id)  # nothing of a refused or broken upload is kept
            raise
        return json_response({"list_id": list_id, "members": members}, 201)

    return routes


def actor(caller: Principal, named: str) -> str:
    """Who the task's transitions name: the key, and the person or tool the caller says
    acts through it (``X-Reach-Actor``), which only the key vouches for."""
    return f"{caller.actor}:{named}" if named else caller.actor


def _action_route(action: str, clock: Clock) -> Any:
    allowed, to = ACTIONS[action]

    async def act(
        tasks: Tasks, caller: TasksWriter, task_no: int = TASK_NO, x_reach_actor: str = ACTOR_HEADER
    ) -> Response:
        target = await _resumed_status(tasks, task_no) if action == "resume" else to
        try:
            await tasks.transition(
                task_no, allowed, target, actor(caller, x_reach_actor), clock.now_ms(), action
            )
        except TransitionRefusedError as exc:
            if exc.status is None:
                raise ApiError(404, "not_found", f"no task {task_no}") from None
            raise ApiError(
                409, "invalid_transition", f"cannot {action} a task that is {exc.status.value}"
            ) from None
        return json_response(await task_view(tasks, task_no))

    return act


async def _resumed_status(tasks: TaskStore, task_no: int) -> TaskStatus:
    """Where a resumed task goes: running (a run was expanding), scheduled (runs to come),
    or completed (every run was planned before the pause)."""
    states = {run.state for run in await tasks.runs(task_no)}
    if "expanding" in states:
        return TaskStatus.RUNNING
    return TaskStatus.SCHEDULED if "pending" in states else TaskStatus.COMPLETED


def parse_body(raw: bytes | None) -> Any:
    if raw is None:
        raise ApiError(413, "too_large", f"a task body is at most {MAX_TASK_BODY} bytes")
    try:
        body = orjson.loads(raw)
        refuse_duplicate_keys(raw, body)  # parsers disagree on which copy of a key wins
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
    except EventError as exc:
        raise ApiError(400, exc.reason, exc.detail) from None
    return body


async def validated(body: Any, checks: TaskChecks, lists: Any, now_ms: int) -> TaskSpec:
    """The task, or 422 with every problem (including lists not uploaded or not complete)."""
    problems: list[Problem] = []
    spec = None
    try:
        spec = validate_task(body, checks.context(now_ms))
    except TaskSpecError as exc:
        problems = exc.problems
    named = list(spec.audience.lists) if spec else _lists_of(body)
    known = await lists.complete_among(named)
    problems += [
        Problem("audience.lists", f"no complete audience list {x!r}") for x in named if x not in known
    ]
    if problems or spec is None:
        details = [p.as_dict() for p in problems]
        message = "; ".join(f"{p.field}: {p.message}" for p in problems)
        raise ApiError(422, "invalid_task", message, details)
    return spec


def _lists_of(body: Any) -> list[str]:
    audience = body.get("audience") if isinstance(body, dict) else None
    values = audience.get("lists") if isinstance(audience, dict) else None
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


async def existing(tasks: TaskStore, task_no: int) -> TaskRow:
    task = await tasks.get(task_no)
    if task is None:
        raise ApiError(404, "not_found", f"no task {task_no}")
    return task


def summary(task: TaskRow) -> dict[str, Any]:
    return {
        "task_no": task.task_no,
        "name": task.name,
        "comment": task.comment,
        "category": task.category,
        "status": task.status.value,
        "schedule_kind": task.schedule_kind,
        "next_run_at": task.next_run_at,
        "created_by": task.created_by,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    }


async def task_view(tasks: TaskStore, task_no: int) -> dict[str, Any]:
    task = await existing(tasks, task_no)
    runs = await tasks.runs(task_no)
    per_channel = await tasks.counts(task_no)
    return {
        **summary(task),
        "final": task.status in FINAL_STATUSES,
        "spec": orjson.loads(task.spec.to_json()),
        "counts": counts_view(runs, per_channel),
        "runs": [run_view(run) for run in runs[-50:]],
        "transitions": [dataclasses.asdict(t) for t in await tasks.transitions(task_no)],
    }


OUTCOMES = ("sent", "failed", "unknown", "suppressed", "delivered")


def counts_view(runs: list[RunRow], per_channel: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The task's counts: audience and planned from the runs' checkpoints, outcomes from
    the channel agents' per-batch counters."""
    totals = {outcome: sum(c.get(outcome, 0) for c in per_channel.values()) for outcome in OUTCOMES}
    return {
        "audience": sum(r.audience for r in runs),
        "planned": sum(r.planned for r in runs),
        **totals,
        "per_channel": {ch: {o: c.get(o, 0) for o in OUTCOMES} for ch, c in sorted(per_channel.items())},
    }


def run_view(run: RunRow) -> dict[str, Any]:
    return dataclasses.asdict(run) | {"checkpoint": None}  # a user id: not shown


def latest_attempts(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """One entry per message (rows come latest attempt first within a message)."""
    out: list[dict[str, Any]] = []
    for user_id, message_id, channel, provider, status, code, attempt, completed_at in rows:
        if out and out[-1]["message_id"] == message_id:
            continue
        out.append(
            {
                "user_id": user_id,
                "message_id": message_id,
                "channel": channel,
                "provider": provider,
                "status": status,
                "error_code": code,
                "attempts": attempt,
                "completed_at": completed_at,
            }
        )
    return out


def decode_task_cursor(cursor: str) -> tuple[int, int]:
    created, _, number = cursor.partition(".")
    if not (created.isdigit() and number.isdigit()):
        raise ApiError(400, "bad_cursor", "malformed cursor; pass the next_cursor of a previous page")
    return int(created), int(number)


def decode_recipient_cursor(cursor: str) -> tuple[str, str]:
    try:
        user_id, _, message_id = bytes.fromhex(cursor).decode().partition("\x1f")
    except ValueError:
        raise ApiError(
            400, "bad_cursor", "malformed cursor; pass the next_cursor of a previous page"
        ) from None
    return user_id, message_id


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


# -- audience uploads ------------------------------------------------------------------------
def is_csv(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in ("text/csv", "application/csv")


async def lines(request: Request) -> AsyncIterator[tuple[int, str]]:
    """The body's lines with their numbers, as they arrive (never the whole body at once)."""
    pending = b""
    number = 0
    async for chunk in request.stream():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            number += 1
            yield number, _decode(raw, number)
    if pending.strip():
        yield number + 1, _decode(pending, number + 1)


def _decode(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise upload_error(number, "not UTF-8") from None


def upload_error(number: int, reason: str) -> ApiError:
    return ApiError(
        422, "invalid_audience", f"line {number}: {reason}", [{"line": number, "message": reason}]
    )


def user_id_of(line: str, number: int, csv_format: bool) -> str | None:
    """The user id on one line (None for a blank line or the CSV header)."""
    if not line:
        return None
    if csv_format:
        value: Any = next(csv.reader(io.StringIO(line)))[0].strip()
        if number == 1 and value == "user_id":
            return None
    else:
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise upload_error(number, "not JSON") from None
        value = data.get("user_id") if isinstance(data, dict) else data
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise upload_error(number, f"a user id is a string of 1 to {MAX_ID_LENGTH} characters")
    return value


async def store_upload(
    lists: Any, list_id: str, body: AsyncIterator[tuple[int, str]], csv_format: bool
) -> None:
    chunk: list[str] = []
    async for number, line in body:
        user_id = user_id_of(line, number, csv_format)
        if user_id is not None:
            chunk.append(user_id)
        if len(chunk) >= UPLOAD_CHUNK:
            await lists.add(list_id, chunk)
            chunk = []
    await lists.add(list_id, chunk)
