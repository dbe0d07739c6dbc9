"""Reach tasks end to end: the API stores them, the worker's runner fires them through Kafka
to the inbox channel, the task gate stops a cancelled task's messages at send time."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from reach.settings import REPO_ROOT
from tests.integration.api_process import ApiProcess
from tests.integration.conftest import Api, Pipeline, start_pipeline, stop_pipeline
from tests.integration.harness import produce_json, settings_env, wait_until
from tests.support.smtp_server import SmtpTestServer

pytestmark = pytest.mark.integration


def post(api: Api | ApiProcess, path: str, body: Any = None, **headers: str) -> httpx.Response:
    content = orjson.dumps(body) if body is not None else b""
    sent = {**api.headers, "content-type": "application/json", **headers}
    return httpx.post(f"{api.base_url}{path}", content=content, headers=sent, timeout=10)


def get(api: Api | ApiProcess, path: str) -> httpx.Response:
    return httpx.get(f"{api.base_url}{path}", headers=api.headers, timeout=10)


def seed_segment(
    p: Pipeline, segment: str, users: list[str], contact_of: Callable[[str], dict[str, str]] | None = None
) -> None:
    profiles = [
        {"user_id": u, "segments": [segment], "contact": contact_of(u) if contact_of else {}} for u in users
    ]
    produce_json(p.settings, p.settings.segments_topic, profiles)
    stored = lambda: p.db.query(  # noqa: E731
        "SELECT COUNT(*) FROM segment_members WHERE segment = %s", [segment]
    )[0][0]
    wait_until(lambda: stored() == len(users), 30, f"segment {segment} stored")


def inbox_task(segment: str, schedule: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": f"to {segment}",
        "category": "notification",
        "audience": {"segments": [segment]},
        "content": {
            "title": "Hello",
            "text": "Task for {{ user_id }} ({{ properties.what }})",
            "variables": {"what": "a test"},  # a variable the template uses must be given
        },
        "channels": ["inbox"],
        "schedule": schedule,
        **extra,
    }


def test_a_scheduled_message_is_sent_at_its_time(pipeline: Pipeline, api: Api) -> None:
    """The design document's functional test: within 1 s of the scheduled time, not before."""
    seed_segment(pipeline, "sched-seg", ["sched-u1", "sched-u2"])
    at = int(time.time() * 1000) + 3000
    body = inbox_task("sched-seg", {"kind": "at", "at": at})
    body["content"]["variables"] = {"what": "scheduled"}
    created = post(api, "/v1/tasks", body)
    assert created.status_code == 201, created.text
    task_no = created.json()["task_no"]
    rows = wait_until(
        lambda: (
            (
                r := pipeline.db.query(
                    "SELECT user_id, attempted_at, completed_at FROM delivery_results "
                    "WHERE rule_id = %s AND status = 'sent'",
                    [f"task:{task_no}"],
                )
            )
            and len(r) == 2
            and r
        ),
        20,
        "both task messages sent",
    )
    for _user, attempted_at, completed_at in rows:
        assert at <= attempted_at, "sent before its time"
        assert completed_at - at <= 1000, f"sent {completed_at - at} ms after its time"
    bodies = pipeline.db.query("SELECT body FROM inbox_messages WHERE user_id = 'sched-u1'")
    assert ("Task for sched-u1 (scheduled)",) in bodies
    shown = get(api, f"/v1/tasks/{task_no}").json()
    wait_until(
        lambda: get(api, f"/v1/tasks/{task_no}").json()["counts"]["sent"] == 2,
        10,
        "the sent count",
    )
    assert shown["status"] == "completed"
    assert [t["to_status"] for t in shown["transitions"]] == ["scheduled", "running", "completed"]


BAD_BODIES = [
    ({"name": "", "category": "nope", "audience": {}, "content": {}, "channels": ["fax"]}, 6),
    (
        inbox_task("x", {"kind": "at", "at": "2020-01-01T00:00:00Z"})
        | {"content": {"text": "{{ ''.__class__ }}"}, "audience": {"filter": "attributes.x =="}},
        3,
    ),
    (inbox_task("x", {"kind": "cron", "cron": "61 * * * *", "zone": "Mars/Base"}), 2),
    (inbox_task("x", {"kind": "local_time", "date": "2020-02-30", "time": "25:00"}), 2),
]


@pytest.mark.parametrize(("body", "problems"), BAD_BODIES)
def test_bad_bodies_get_one_problem_per_field_and_store_nothing(
    pipeline: Pipeline, api: Api, body: dict[str, Any], problems: int
) -> None:
    before = pipeline.db.query("SELECT COUNT(*) FROM tasks")
    answer = post(api, "/v1/tasks", body)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["error"] == "invalid_task"
    fields = [d["field"] for d in error["details"]]
    assert len(fields) == problems, error["details"]
    assert pipeline.db.query("SELECT COUNT(*) FROM tasks") == before


def test_idempotency_key_same_body_same_task_other_body_refused(pipeline: Pipeline, api: Api) -> None:
    body = inbox_task("idem-seg", {"kind": "at", "at": int(time.time() * 1000) + 3_600_000})
    first = post(api, "/v1/tasks", body, **{"Idempotency-Key": "idem-1"})
    again = post(api, "/v1/tasks", body, **{"Idempotency-Key": "idem-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["task_no"] == again.json()["task_no"]
    other = post(api, "/v1/tasks", {**body, "name": "other"}, **{"Idempotency-Key": "idem-1"})
    assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
    assert pipeline.db.query("SELECT COUNT(*) FROM tasks WHERE name = 'other'") == [(0,)]
    cancelled = post(api, f"/v1/tasks/{first.json()['task_no']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert post(api, f"/v1/tasks/{first.json()['task_no']}/pause").status_code == 409
    audited = pipeline.db.query(
        "SELECT actor, action FROM audit_log WHERE target = %s ORDER BY at, action",
        [str(first.json()["task_no"])],
    )
    key_id = api.headers["authorization"].split("_")[1]
    assert audited == [(f"key:{key_id}", "task.created"), (f"key:{key_id}", "task.cancel")]


def test_an_uploaded_audience_is_stored_and_a_bad_one_leaves_nothing(pipeline: Pipeline, api: Api) -> None:
    def lines() -> Iterator[bytes]:
        yield b"user_id\n"
        for n in range(2500):
            yield f"up-{n}\n".encode()

    stored = httpx.post(
        f"{api.base_url}/v1/audiences",
        content=lines(),
        headers={**api.headers, "content-type": "text/csv"},
        timeout=30,
    )
    assert stored.status_code == 201, stored.text
    assert stored.json()["members"] == 2500
    bad = httpx.post(
        f"{api.base_url}/v1/audiences",
        content=b'{"user_id": "ok-1"}\n{"user_id": 5}\n',
        headers={**api.headers, "content-type": "application/x-ndjson"},
        timeout=10,
    )
    assert bad.status_code == 422 and bad.json()["details"] == [
        {"line": 2, "message": "a user id is a string of 1 to 128 characters"}
    ]
    assert pipeline.db.query("SELECT COUNT(*) FROM audience_members WHERE user_id = 'ok-1'") == [(0,)]


class OneProcessApi(ApiProcess):
    """``reach api --workers 1``: no uvicorn supervisor, whose health pings kill a child that
    is slow to start on a loaded machine (seen here at load 20+)."""

    def start(self) -> OneProcessApi:
        env = {**os.environ, **settings_env(self.settings)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reach.cli", "api", "--workers", "1"],
                env=env, stdout=log, stderr=log, cwd=REPO_ROOT,
            )  # fmt: skip
        return self


@pytest.fixture(scope="module")
def own(
    tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpTestServer
) -> Iterator[tuple[Pipeline, ApiProcess]]:
    """A pipeline of these tests' own, as they kill its worker: the inbox sends 20 a second
    (so a task's messages wait on the outbox), pages are small and a dead worker's run is
    taken over 2 s after its last checkpoint."""
    tmp = tmp_path_factory.mktemp("tasks")
    overrides = {"task_page_size": 50, "task_lease_seconds": 2.0}
    p = start_pipeline(tmp, smtp_server, overrides, inbox_limit="limit_per_window: 20")
    served = OneProcessApi(p.settings, tmp / "api.log").with_key("tasks:write").start().wait_serving(60)
    try:
        yield p, served
    finally:
        served.stop()
        stop_pipeline(p)


def test_cancel_in_the_middle_of_a_run_sends_nothing_after_it(own: tuple[Pipeline, ApiProcess]) -> None:
    p, served = own
    users = [f"cx-{n:03d}" for n in range(200)]
    seed_segment(p, "cancel-seg", users)
    task_no = post(served, "/v1/tasks", inbox_task("cancel-seg", {"kind": "now"})).json()["task_no"]
    sent = lambda: p.db.query(  # noqa: E731
        "SELECT COUNT(*) FROM delivery_results WHERE rule_id = %s AND status = 'sent'", [f"task:{task_no}"]
    )[0][0]
    wait_until(lambda: sent() >= 20, 20, "the first throttle window's messages")
    answer = post(served, f"/v1/tasks/{task_no}/cancel", **{"X-Reach-Actor": "ops-test"})
    cancelled_at = int(time.time() * 1000)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    view = wait_until(
        lambda: (
            (v := get(served, f"/v1/tasks/{task_no}").json())["counts"]["sent"] + v["counts"]["suppressed"]
            == v["counts"]["planned"]
            and v
        ),
        30,
        "every planned message sent or suppressed",
    )
    assert view["counts"]["planned"] == 200 and view["counts"]["suppressed"] > 0
    late = p.db.query(
        "SELECT COUNT(*) FROM delivery_results WHERE rule_id = %s AND status = 'sent' AND attempted_at >= %s",
        [f"task:{task_no}", cancelled_at],
    )
    assert late == [(0,)], "a message was sent after the cancel was answered"
    inbox = p.db.query("SELECT COUNT(*) FROM inbox_messages WHERE user_id LIKE 'cx-%%'")[0][0]
    assert inbox == view["counts"]["sent"]
    last = view["transitions"][-1]
    key_id = served.headers["authorization"].split("_")[1]  # Bearer rk_<key id>_<secret>
    assert (last["to_status"], last["actor"], last["reason"]) == (
        "cancelled",
        f"key:{key_id}:ops-test",
        "cancel",
    )


def test_kill_nine_during_an_expansion_resumes_with_no_recipient_sent_twice(
    own: tuple[Pipeline, ApiProcess], smtp_server: SmtpTestServer
) -> None:
    """SMTP is not idempotent: a second send would be a second e-mail in the server's inbox."""
    p, served = own
    users = [f"kill-{n:04d}" for n in range(300)]
    seed_segment(p, "kill-seg", users, contact_of=lambda u: {"email": f"{u}@reach.test"})
    body = inbox_task("kill-seg", {"kind": "now"}, channels=["email"], rate_per_minute=6000)
    task_no = post(served, "/v1/tasks", body).json()["task_no"]
    planned = lambda: p.db.query(  # noqa: E731
        "SELECT planned, state FROM task_runs WHERE task_no = %s", [task_no]
    )[0]
    wait_until(lambda: planned()[0] >= 100, 30, "a third of the audience planned")
    p.worker.kill()
    assert planned()[1] == "expanding", "the expansion ended before the kill"
    p.worker.start()
    wait_until(lambda: planned() == (300, "planned"), 60, "the expansion to finish after the restart")
    final = lambda: p.db.query(  # noqa: E731
        "SELECT user_id, status FROM delivery_results WHERE rule_id = %s AND status IN ('sent', 'unknown')",
        [f"task:{task_no}"],
    )
    rows = wait_until(lambda: len(r := final()) >= 300 and r, 60, "every recipient's outcome")
    assert sorted(user for user, _ in rows) == users, "a recipient has no outcome, or two"
    received = collections.Counter(
        rcpt.split("@")[0] for m in smtp_server.messages for rcpt in m.rcpt_tos if rcpt.startswith("kill-")
    )
    assert max(received.values()) == 1, "a recipient got the e-mail twice"
    sent = {user for user, status in rows if status == "sent"}
    assert sent <= set(received) and len(received) >= len(sent)
