"""The task validator: every problem at once, one per field; a good body round-trips."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from models.taskruns import merge_pages
from models.tasks import (
    PlannedRun,
    Schedule,
    ScheduleKind,
    TaskSpec,
    TaskSpecError,
    ValidationContext,
    body_hash,
    first_runs,
    next_cron_run,
    parse_instant,
    task_no_of,
    validate_task,
)
from rules.model import Template

NOW = int(dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC).timestamp() * 1000)
CTX = ValidationContext(
    NOW, ["inbox", "email"], {"welcome": Template("welcome", "Hi", "Hello {{ user_id }}")}, ["marketing"]
)


def body(**overrides: Any) -> dict[str, Any]:
    good: dict[str, Any] = {
        "name": "sale",
        "category": "marketing",
        "audience": {"segments": ["vip"], "filter": 'attributes.country == "DE"'},
        "content": {"template": "welcome"},
        "channels": ["inbox", "email"],
        "schedule": {"kind": "at", "at": "2026-12-24T09:00:00+01:00"},
        "rate_per_minute": 600,
    }
    good.update(overrides)
    return good


def problems(data: Any) -> dict[str, str]:
    with pytest.raises(TaskSpecError) as caught:
        validate_task(data, CTX)
    fields = [p.field for p in caught.value.problems]
    assert len(fields) == len(set(fields)), f"one problem per field: {caught.value.problems}"
    return {p.field: p.message for p in caught.value.problems}


def test_a_good_body_validates_and_round_trips_through_storage() -> None:
    spec = validate_task(body(), CTX)
    assert spec.schedule == Schedule(ScheduleKind.AT, at_ms=NOW + 23 * 86_400_000 - 4 * 3_600_000)
    assert TaskSpec.from_json(spec.to_json()) == spec
    assert spec.rate_per_minute == 600 and spec.priority == 5


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "name": "",
            "category": "spam",
            "audience": {"segments": "vip"},
            "content": {"template": "nope"},
            "channels": ["fax"],
            "priority": 12,
            "schedule": {"kind": "at", "at": "2020-01-01T00:00:00Z"},
            "colour": "red",
        }
    )
    assert set(found) == {
        "name", "category", "audience.segments", "audience", "content.template", "channels",
        "priority", "schedule.at", "colour",
    }  # fmt: skip
    assert found["schedule.at"] == "is in the past"
    assert "fax" in found["channels"] and "inbox" in found["channels"]


@pytest.mark.parametrize(
    ("content", "field", "words"),
    [
        ({"text": "{{ ''.__class__ }}"}, "content.text", "unsafe"),
        ({"title": "{{ 'x' * 100000000 }}", "text": "t"}, "content.title", "over the limit"),
        ({"text": "{% if %}"}, "content", "syntax"),
        ({"template": "welcome", "text": "also"}, "content", "not both"),
        ({}, "content", "name a template"),
        ({"text": "Use {{ properties.code }}"}, "content.text", "variable 'properties.code' is missing"),
    ],
)
def test_templates_are_rendered_against_a_sample_recipient(
    content: dict[str, Any], field: str, words: str
) -> None:
    assert words in problems(body(content=content))[field]


def test_an_attribute_the_sample_recipient_lacks_is_not_a_problem_but_a_task_variable_is() -> None:
    # Recipients' attributes differ (one without it fails at send time); the task's own
    # variables are known now.
    content = {"text": "Hi {{ attributes.nickname }}, use {{ properties.code }}", "variables": {"code": "X"}}
    assert validate_task(body(content=content), CTX).content.text == content["text"]


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"kind": "weekly"}, "schedule.kind"),
        ({"kind": "at", "at": 1700000000}, "schedule.at"),  # seconds, not ms
        ({"kind": "at", "at": "2026-12-24T09:00:00"}, "schedule.at"),  # no offset
        ({"kind": "local_time", "date": "2026-12-01", "time": "09:00"}, "schedule.date"),  # passed somewhere
        ({"kind": "local_time", "date": "2026-12-24", "time": "9am"}, "schedule.time"),
        ({"kind": "cron", "cron": "0 9 * *", "zone": "UTC"}, "schedule.cron"),
        ({"kind": "cron", "cron": "0 9 * * *", "zone": "Moon/Base"}, "schedule.zone"),
        ({"kind": "cron", "cron": "0 9 * * *", "max_runs": 0}, "schedule.max_runs"),
    ],
)
def test_bad_schedules_name_their_field(schedule: dict[str, Any], field: str) -> None:
    assert field in problems(body(schedule=schedule))


def test_bad_audiences() -> None:
    assert "filter" in problems(body(audience={}))["audience"]
    assert "16 hex" in problems(body(audience={"lists": ["short"]}))["audience.lists"]
    assert "syntax" in problems(body(audience={"filter": "attributes.x =="}))["audience.filter"]
    assert problems("a string") == {"": "a task is an object (JSON or YAML mapping)"}


def test_runs_of_each_schedule() -> None:
    assert first_runs(Schedule(ScheduleKind.NOW), NOW) == [PlannedRun(1, NOW)]
    assert first_runs(Schedule(ScheduleKind.AT, at_ms=NOW + 5), NOW) == [PlannedRun(1, NOW + 5)]
    local = first_runs(Schedule(ScheduleKind.LOCAL_TIME, date="2026-12-24", time="09:00"), NOW)
    assert [r.run_no for r in local] == list(range(1, len(local) + 1)) and len(local) > 30
    cron = Schedule(ScheduleKind.CRON, cron="0 9 * * *", zone="UTC", max_runs=2)
    first = first_runs(cron, NOW)
    assert first == [PlannedRun(1, NOW + 86_400_000 - 3 * 3_600_000)]
    second = next_cron_run(cron, first[0])
    assert second == PlannedRun(2, first[0].due_at + 86_400_000)
    assert next_cron_run(cron, second) is None  # max_runs
    assert next_cron_run(Schedule(ScheduleKind.NOW), first[0]) is None


def test_small_helpers() -> None:
    assert (
        task_no_of("task:42") == 42 and task_no_of("welcome-signup") is None and task_no_of("task:x") is None
    )
    assert body_hash({"a": 1, "b": 2}) == body_hash({"b": 2, "a": 1}) != body_hash({"a": 2, "b": 2})
    assert parse_instant("2026-12-24T09:00:00Z") == parse_instant(1798102800000) == 1798102800000
    assert parse_instant(True) is None and parse_instant("tomorrow") is None


def row(user_id: str) -> tuple[Any, ...]:
    return (user_id, None, None, None, None, None)


def test_merged_pages_stop_at_the_shortest_full_page() -> None:
    segment = [row("a"), row("c"), row("e")]  # full (limit 3): ids after "e" are unknown
    uploaded = [row("b"), row("c"), row("f")]  # full too, ends at "f"
    merged = merge_pages([segment, uploaded], 3)
    assert [r.user_id for r in merged] == ["a", "b", "c"]
    merged = merge_pages([segment, uploaded], 5)  # neither page is full: everything, once
    assert [r.user_id for r in merged] == ["a", "b", "c", "e", "f"]
    assert [r.user_id for r in merge_pages([[row("a"), row("z")], [row("b")]], 2)] == ["a", "b"]
