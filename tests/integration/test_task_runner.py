"""The task runner on the real MariaDB and Kafka, driven by an injected clock: local time
across zones and a DST change, cron, two workers, and a crash in the middle of a run."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agents import tasks
from models import taskruns
from models.messages import DeliveryResult, DeliveryStatus
from models.profiles import SeenVersion, UserProfile
from models.receipts import Receipt, ReceiptStatus, ReceiptStore
from models.storage import ResultStore, create_pool
from models.taskruns import AudienceLists, Recipient, audience_page
from models.tasks import Audience, TaskStatus
from models.taskstore import TaskStore
from tests.integration.harness import Db
from tests.integration.task_rig import RunnerRig, SimulatedCrashError, task_body

pytestmark = pytest.mark.integration


def utc_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[RunnerRig]:
    opened = await RunnerRig.open(tmp_path, utc_ms("2026-03-07T12:00:00"), task_page_size=50)
    try:
        yield opened
    finally:
        await opened.close()


def members(count: int, segment: str = "task-seg", **extra: str) -> list[UserProfile]:
    return [UserProfile(f"u-{i:05d}", segments=(segment,), **extra) for i in range(count)]  # type: ignore[arg-type]


# 09:00 on 2026-03-08 in each zone. New York changes to summer time at 02:00 that very
# morning, so its 09:00 is EDT (UTC-4), not EST; Berlin (CET) and Tokyo do not change.
ZONES = {
    "u-tokyo": ("Asia/Tokyo", "2026-03-08T00:00:00"),
    "u-berlin": ("Europe/Berlin", "2026-03-08T08:00:00"),
    "u-nozone": ("", "2026-03-08T09:00:00"),  # the default zone, UTC
    "u-newyork": ("America/New_York", "2026-03-08T13:00:00"),
}


async def test_local_time_task_reaches_each_zone_at_its_local_nine(rig: RunnerRig) -> None:
    await rig.profiles(
        [UserProfile(user, segments=("task-seg",), timezone=zone) for user, (zone, _) in ZONES.items()]
    )
    schedule = {"kind": "local_time", "date": "2026-03-08", "time": "09:00"}
    task_no = await rig.create(task_body(schedule=schedule))
    runner = rig.runner()
    for user, (_zone, due) in sorted(ZONES.items(), key=lambda item: item[1][1]):
        before = len(rig.produced)
        rig.at(utc_ms(due) - 1)
        await runner.tick()
        assert user not in {m["user_id"] for m in rig.produced}, f"{user} planned before {due}"
        rig.at(utc_ms(due))
        await runner.tick()
        new = rig.produced[before:]
        assert [m["user_id"] for m in new] == [user], f"at {due}"
        assert new[0]["event_ts"] == utc_ms(due)
    rig.at(utc_ms("2026-03-09T12:00:00"))  # past the last zone (UTC-12)
    await runner.tick()
    assert sorted(m["user_id"] for m in rig.produced) == sorted(ZONES)
    assert (await TaskStore(rig.pool).get(task_no)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    on_kafka = rig.outbox("inbox", len(ZONES))
    assert sorted(m["user_id"] for m in on_kafka) == sorted(ZONES)


async def test_cron_task_runs_twice_each_time_reevaluating_the_audience(rig: RunnerRig) -> None:
    await rig.profiles(members(3))
    schedule = {"kind": "cron", "cron": "0 9 * * *", "zone": "Europe/Berlin", "max_runs": 2}
    task_no = await rig.create(task_body(schedule=schedule))
    store, runner = TaskStore(rig.pool), rig.runner()
    rig.at(utc_ms("2026-03-08T07:59:59"))
    assert await runner.tick() == 0
    rig.at(utc_ms("2026-03-08T08:00:00"))  # 09:00 CET
    assert await runner.tick() == 3
    task = await store.get(task_no)
    assert task is not None and task.status is TaskStatus.SCHEDULED
    assert task.next_run_at == utc_ms("2026-03-09T08:00:00")
    await rig.profiles(members(5))  # two more members by the next run
    rig.at(utc_ms("2026-03-09T08:00:00"))
    assert await runner.tick() == 5
    assert (await store.get(task_no)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    by_run = collections.Counter(m["event_id"] for m in rig.produced)
    assert by_run == {f"task:{task_no}:1": 3, f"task:{task_no}:2": 5}
    assert len({m["message_id"] for m in rig.produced}) == 8
    statuses = [t.to_status for t in await store.transitions(task_no)]
    assert statuses == ["scheduled", "running", "scheduled", "running", "completed"]


async def test_two_workers_fire_each_due_run_once(rig: RunnerRig) -> None:
    await rig.profiles(members(120))
    tasks = [await rig.create(task_body(name=f"t{i}")) for i in range(4)]
    second_pool = await create_pool(rig.settings)
    try:
        first, second = rig.runner(), rig.runner(pool=second_pool)
        while len(rig.produced) < 4 * 120:
            planned = await asyncio.gather(first.tick(), second.tick())
            assert sum(planned) > 0, "neither worker made progress"
    finally:
        second_pool.close()
        await second_pool.wait_closed()
    ids = [m["message_id"] for m in rig.produced]
    assert len(ids) == len(set(ids)) == 4 * 120
    assert collections.Counter(m["rule_id"] for m in rig.produced) == {f"task:{n}": 120 for n in tasks}


async def test_a_crash_mid_expansion_resumes_from_the_checkpoint(rig: RunnerRig) -> None:
    await rig.profiles(members(400))
    task_no = await rig.create(task_body())
    rig.crash_after_frames = 3  # 50 recipients a page, one frame a page: dies on page 4
    with pytest.raises(SimulatedCrashError):
        await rig.runner().tick()
    assert len(rig.produced) == 150
    rig.crash_after_frames = None
    successor = rig.runner()
    assert await successor.tick() == 0, "the dead worker's lease still holds"
    rig.at(rig.clock.now_ms() + int(rig.settings.task_lease_seconds * 1000) + 1)
    while (await TaskStore(rig.pool).get(task_no)).status is not TaskStatus.COMPLETED:  # type: ignore[union-attr]
        assert await successor.tick() > 0
    users = collections.Counter(m["user_id"] for m in rig.produced)
    assert sorted(users) == [f"u-{i:05d}" for i in range(400)]
    assert set(users.values()) == {1}, "a page acknowledged before the crash was planned again"
    runs = await TaskStore(rig.pool).runs(task_no)
    assert [(r.state, r.audience, r.planned) for r in runs] == [("planned", 400, 400)]


async def test_a_drive_reads_each_page_once_across_its_slices(
    rig: RunnerRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slice shorter than a page (here none at all: one page a slice) keeps the page read
    ahead for the next slice instead of dropping it and reading it again."""
    await rig.profiles(members(400))  # 8 pages of 50
    await rig.create(task_body())
    reads: list[str] = []

    async def counted(pool: Any, audience: Audience, after: str, *args: Any) -> list[Recipient]:
        reads.append(after)
        return await audience_page(pool, audience, after, *args)

    monkeypatch.setattr(tasks, "audience_page", counted)
    runner = rig.runner()
    runner.slice = 0.0
    assert await runner.tick() == 400
    assert len(reads) == len(set(reads)) == 9, reads  # the 8 pages and the empty one after them


async def test_a_delivery_receipt_counts_once_towards_its_task(rig: RunnerRig) -> None:
    sent = DeliveryResult(
        "m" * 24, 1, "u-1", "task:77", "sms", "sms-a", DeliveryStatus.SENT, "", 0, 1, 2,
        provider_message_id="pm-77",
    )  # fmt: skip
    await ResultStore(rig.pool).upsert([sent])
    receipt = Receipt(ReceiptStatus.DELIVERED, "DELIVRD", provider_message_id="pm-77")
    for _ in range(2):  # the provider calls back twice
        await ReceiptStore(rig.pool).record("sms-a", [receipt], rig.clock.now_ms())
    assert await TaskStore(rig.pool).counts(77) == {"sms": {"delivered": 1}}


PLAIN_VERSIONS = {"ios": SeenVersion("1.8.0", 5), "android": SeenVersion('2.0"b', 6)}


async def test_audience_pages_decode_the_same_in_one_value_or_row_by_row(
    rig: RunnerRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = [
        UserProfile('u-"quoted\\', segments=("task-seg", "vip"), contact={"phone": "+1555"},
                    timezone="Asia/Tokyo", attributes={"name": "Zoë", "tier": {"level": 2}}),
        UserProfile("u-é-unicode", segments=("task-seg",), attributes={"n": [1, None, "x"]}),
        UserProfile("u-plain", segments=("task-seg",)),
    ]  # fmt: skip
    await rig.profiles(odd)
    db = Db(rig.settings)
    db.query("UPDATE user_profiles SET attributes = '' WHERE user_id = 'u-plain'")  # an empty column
    db.query(
        "INSERT INTO user_app_versions (user_id, platform, app_version, seen_at) VALUES "
        "('u-plain', 'ios', '1.8.0', 5), ('u-plain', 'android', '2.0\"b', 6), ('u-zlisted', 'web', '3', 7)"
    )  # a member without a profile has app versions too
    db.query(
        "INSERT INTO segment_members (segment, user_id, updated_at) VALUES ('task-seg', 'u-noprofile', 0)"
    )
    uploaded = AudienceLists(rig.pool)
    list_id = await uploaded.begin(0)
    await uploaded.add(list_id, ["u-plain", "u-zlisted"])  # one in the segment too, one without a profile
    both = Audience(segments=("task-seg",), lists=(list_id,))
    expected = [
        Recipient("u-\"quoted\\", ("task-seg", "vip"), {"phone": "+1555"}, "Asia/Tokyo",
                  {"name": "Zoë", "tier": {"level": 2}}),
        Recipient("u-noprofile"),
        Recipient("u-plain", ("task-seg",), app_versions=PLAIN_VERSIONS),
        Recipient("u-zlisted", app_versions={"web": SeenVersion("3", 7)}),
        Recipient("u-é-unicode", ("task-seg",), {}, "", {"n": [1, None, "x"]}),
    ]  # fmt: skip
    assert await audience_page(rig.pool, both, "", 10) == expected
    assert await audience_page(rig.pool, both, "u-noprofile", 2) == expected[2:4]
    monkeypatch.setattr(taskruns, "PAGE_BYTES", 64)  # too small for the page: read row by row
    assert await audience_page(rig.pool, both, "", 10) == expected


async def test_local_time_parts_read_only_their_members_grouped_once(rig: RunnerRig) -> None:
    """The first part assigns every recipient to a part once; a recipient whose zone changes
    while the task spans the zones is reached once, in the part of their zone at the start."""
    await rig.profiles(
        [UserProfile(user, segments=("task-seg",), timezone=zone) for user, (zone, _) in ZONES.items()]
    )
    schedule = {"kind": "local_time", "date": "2026-03-08", "time": "09:00"}
    task_no = await rig.create(task_body(schedule=schedule))
    runner, db = rig.runner(), Db(rig.settings)
    rig.at(utc_ms("2026-03-07T23:00:00"))  # the first part (UTC+14) is due: it groups
    await runner.tick()
    parts = dict(db.query("SELECT user_id, run_no FROM task_run_members WHERE task_no = %s", [task_no]))
    assert len(parts) == len(ZONES) and len(set(parts.values())) == len(ZONES)
    rig.at(utc_ms("2026-03-08T00:00:00"))
    await runner.tick()
    assert [m["user_id"] for m in rig.produced] == ["u-tokyo"]
    # Tokyo's user moves to New York, Berlin's to Tokyo (a part already past): neither
    # is reached again, and each part still reads only its own members.
    await rig.profiles([UserProfile("u-tokyo", segments=("task-seg",), timezone="America/New_York"),
                        UserProfile("u-berlin", segments=("task-seg",), timezone="Asia/Tokyo")])  # fmt: skip
    rig.at(utc_ms("2026-03-09T12:00:00"))
    while (await TaskStore(rig.pool).get(task_no)).status is not TaskStatus.COMPLETED:  # type: ignore[union-attr]
        await runner.tick()
    assert collections.Counter(m["user_id"] for m in rig.produced) == {user: 1 for user in ZONES}
    by_user = {m["user_id"]: m["event_ts"] for m in rig.produced}
    assert by_user == {user: utc_ms(due) for user, (_zone, due) in ZONES.items()}
    runs = await TaskStore(rig.pool).runs(task_no)
    assert sum(r.audience for r in runs) == len(ZONES) and all(r.grouped for r in runs)
    assert db.query("SELECT COUNT(*) FROM task_run_members WHERE task_no = %s", [task_no]) == [(0,)]


async def test_a_cancelled_local_time_task_leaves_no_members_behind(rig: RunnerRig) -> None:
    """Cancelled after its first part grouped the audience: once no drive can still be
    writing them (a lease later), the parts' members are deleted, a few hundred a statement."""
    await rig.profiles(
        [UserProfile(f"u-{i:04d}", segments=("task-seg",), timezone=zone)
         for i, zone in enumerate(["Asia/Tokyo", "Europe/Berlin", "America/New_York"] * 400)]
    )  # fmt: skip
    schedule = {"kind": "local_time", "date": "2026-03-08", "time": "09:00"}
    task_no = await rig.create(task_body(schedule=schedule))
    runner, db, store = rig.runner(), Db(rig.settings), TaskStore(rig.pool)
    members = lambda: db.query("SELECT COUNT(*) FROM task_run_members WHERE task_no = %s", [task_no])[0][0]  # noqa: E731
    rig.at(utc_ms("2026-03-07T23:00:00"))
    while members() < 1200 or (await store.runs(task_no))[0].state == "grouping":
        await runner.tick()
    rig.at(utc_ms("2026-03-08T00:00:00"))  # Tokyo's part planned: its members are gone
    await runner.tick()
    assert members() == 800
    await store.transition(task_no, [TaskStatus.RUNNING], TaskStatus.CANCELLED, "test", rig.clock.now_ms())
    await runner.tick()
    assert members() == 800, "deleted while a drive might still be grouping"
    rig.at(rig.clock.now_ms() + int(rig.settings.task_lease_seconds * 1000) + 1)
    await runner.tick()
    assert members() == 0
    assert db.query("SELECT COUNT(*) FROM task_member_sweeps") == [(0,)]
