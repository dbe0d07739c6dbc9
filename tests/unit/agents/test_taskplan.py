"""Task runner decisions: who a run reaches, their messages, how many to read now, and
what the task gate does with a message at send time."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from agents.taskgate import Verdict, verdict
from agents.taskplan import (
    PageEncoder,
    RunPlan,
    chosen,
    due_at_for,
    page_allowance,
    plan_page,
    plan_recipient,
)
from channels.base import ProviderConfig
from channels.routing import WeightedChooser
from models.messages import ReachMessage
from models.profiles import SeenVersion
from models.taskruns import Recipient
from models.tasks import TaskSpec, TaskStatus, ValidationContext, validate_task
from rules.engine import RuleEngine
from rules.loader import load_rulebook

NOW = int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
RULES = """
channel_rules:
  - id: marketing-no-sms
    when: rule_id == "task:7" and not ("sms_ok" in segments)
    use: [inbox]
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> RuleEngine:
    directory = tmp_path_factory.mktemp("rules")
    (directory / "rules.yaml").write_text(RULES)
    return RuleEngine.build(load_rulebook(directory, known_channels=["sms", "inbox"]))


CHOOSERS = {
    "sms": WeightedChooser(
        [ProviderConfig("aliyun", "aliyun_sms")], random.Random(1), {"aliyun": ("phone",)}
    ),
    "inbox": WeightedChooser([ProviderConfig("mariadb", "inbox")], random.Random(1)),
}


def spec(**overrides: object) -> TaskSpec:
    body = {
        "name": "t",
        "category": "marketing",
        "audience": {"segments": ["s"]},
        "content": {"text": "hi {{ attributes.name }}"},
        "channels": ["sms", "inbox"],
        "schedule": {"kind": "now"},
        **overrides,
    }
    return validate_task(body, ValidationContext(NOW, ["sms", "inbox"], {}, ["marketing"]))


def test_channel_rules_and_reachability_pick_the_channels(engine: RuleEngine) -> None:
    plan = RunPlan.of(7, 1, NOW, spec(), "UTC")
    phone = {"phone": "+15550001"}
    opted_in = Recipient("u-1", ("s", "sms_ok"), phone, attributes={"name": "Ada"})
    assert [m.channel for m in plan_recipient(plan, opted_in, engine, CHOOSERS, NOW)] == ["sms", "inbox"]
    not_opted = Recipient("u-2", ("s",), phone)
    assert [m.channel for m in plan_recipient(plan, not_opted, engine, CHOOSERS, NOW)] == ["inbox"]
    no_phone = Recipient("u-3", ("s", "sms_ok"))
    assert [m.channel for m in plan_recipient(plan, no_phone, engine, CHOOSERS, NOW)] == ["inbox"]
    message = plan_recipient(plan, opted_in, engine, CHOOSERS, NOW)[0]
    assert (message.rule_id, message.template, message.event_id) == ("task:7", "task:7", "task:7:1")
    assert message.variables["attributes"] == {"name": "Ada"}


def test_task_messages_carry_only_their_channels_contact_fields(engine: RuleEngine) -> None:
    plan = RunPlan.of(7, 1, NOW, spec(), "UTC")
    everything = Recipient("u-1", ("s", "sms_ok"), {"phone": "+1555", "email": "a@b.c", "fcm_token": "f"})
    contacts = {m.channel: dict(m.contact) for m in plan_recipient(plan, everything, engine, CHOOSERS, NOW)}
    assert contacts == {"sms": {"phone": "+1555"}, "inbox": {}}
    records, _reached, _made = PageEncoder(plan, engine, CHOOSERS).page([everything], NOW)
    encoded = {ch: dict(ReachMessage.from_bytes(v).contact) for ch, recs in records.items() for _k, v in recs}
    assert encoded == contacts


def test_message_ids_derive_from_task_run_user_and_channel(engine: RuleEngine) -> None:
    user = Recipient("u-1", ("s",))
    first = plan_recipient(RunPlan.of(7, 1, NOW, spec(), "UTC"), user, engine, CHOOSERS, NOW)
    again = plan_recipient(RunPlan.of(7, 1, NOW, spec(), "UTC"), user, engine, CHOOSERS, NOW + 5)
    second_run = plan_recipient(RunPlan.of(7, 2, NOW, spec(), "UTC"), user, engine, CHOOSERS, NOW)
    other_task = plan_recipient(RunPlan.of(8, 1, NOW, spec(), "UTC"), user, engine, CHOOSERS, NOW)
    ids = [m[0].message_id for m in (first, again, second_run, other_task)]
    assert ids[0] == ids[1] and len(set(ids)) == 3


def test_filter_and_local_time_part_choose_recipients(engine: RuleEngine) -> None:
    local = {"kind": "local_time", "date": "2026-03-08", "time": "09:00"}
    filtered = spec(schedule=local, audience={"segments": ["s"], "filter": 'attributes.tier == "gold"'})
    tokyo = Recipient("u-t", ("s",), timezone="Asia/Tokyo", attributes={"tier": "gold"})
    parts = RunPlan.of(7, 1, NOW, filtered, "UTC").parts
    tokyo_part = parts.index(due_at_for(RunPlan.of(7, 1, NOW, filtered, "UTC"), tokyo)) + 1
    assert chosen(RunPlan.of(7, tokyo_part, NOW, filtered, "UTC"), tokyo)
    assert not chosen(RunPlan.of(7, tokyo_part + 1, NOW, filtered, "UTC"), tokyo)
    silver = Recipient("u-s", ("s",), timezone="Asia/Tokyo", attributes={"tier": "silver"})
    assert not chosen(RunPlan.of(7, tokyo_part, NOW, filtered, "UTC"), silver)
    bad_zone = Recipient("u-x", ("s",), timezone="Nowhere/City", attributes={"tier": "gold"})
    berlin_plan = RunPlan.of(7, 1, NOW, filtered, "Europe/Berlin")
    assert due_at_for(berlin_plan, bad_zone) == int(
        dt.datetime(2026, 3, 8, 8, tzinfo=dt.UTC).timestamp() * 1000
    )
    messages, reached = plan_page(RunPlan.of(7, tokyo_part, NOW, filtered, "UTC"), [tokyo, silver], engine,
                                  CHOOSERS, NOW)  # fmt: skip
    assert reached == 1 and [m.user_id for m in messages] == ["u-t"]


@pytest.mark.parametrize(
    ("rate", "elapsed_ms", "done", "expected"),
    [
        (0, 0, 0, 1000),  # no rate: a full page
        (600, 0, 0, 10),  # a second's worth at the start
        (600, 30_000, 0, 310),  # half a minute: 300, plus the first second's 10
        (600, 30_000, 310, 0),  # caught up: wait
        (600, 600_000, 0, 1000),  # far behind: still one page at a time
        (30, 0, 0, 1),  # under one a second: one at a time
    ],
)
def test_page_allowance_paces_to_the_rate(rate: int, elapsed_ms: int, done: int, expected: int) -> None:
    assert page_allowance(rate, NOW, NOW + elapsed_ms, done, 1000) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (TaskStatus.RUNNING, (Verdict.SEND, "")),
        (TaskStatus.SCHEDULED, (Verdict.SEND, "")),
        (TaskStatus.COMPLETED, (Verdict.SEND, "")),  # planned, still sending
        (TaskStatus.PAUSED, (Verdict.HOLD, "task_paused")),
        (TaskStatus.CANCELLED, (Verdict.DROP, "task_cancelled")),
        (TaskStatus.FAILED, (Verdict.DROP, "task_failed")),
        (None, (Verdict.DROP, "task_missing")),
    ],
)
def test_gate_verdicts(status: TaskStatus | None, expected: tuple[Verdict, str]) -> None:
    assert verdict(status) == expected


SEEN = {"ios": SeenVersion("1.8", NOW - 5), "android": SeenVersion("2.2", NOW - 1)}
PLATFORMS = {"sms": "ios"}  # as if the SMS channel were one platform's app


def test_task_messages_carry_the_app_version_the_profile_last_saw(engine: RuleEngine) -> None:
    plan = RunPlan.of(7, 1, NOW, spec(), "UTC")
    user = Recipient("u-1", ("s", "sms_ok"), {"phone": "+1555"}, app_versions=SEEN)
    apps = {m.channel: (m.app_platform, m.app_version) for m in plan_recipient(
        plan, user, engine, CHOOSERS, NOW, platforms=PLATFORMS)}  # fmt: skip
    assert apps == {"sms": ("ios", "1.8"), "inbox": ("android", "2.2")}  # the most recent app
    unseen = plan_recipient(plan, Recipient("u-2", ("s",)), engine, CHOOSERS, NOW)
    assert [(m.app_platform, m.app_version) for m in unseen] == [("", "")]


def test_an_audience_filter_selects_by_the_profiles_app_version() -> None:
    plan = RunPlan.of(
        7, 1, NOW, spec(audience={"filter": 'version(app_version.ios) < version("1.9.0")'}), "UTC"
    )
    old, new = (
        Recipient("u-1", app_versions=SEEN),
        Recipient("u-2", app_versions={"ios": SeenVersion("1.10", NOW)}),
    )
    assert [chosen(plan, r) for r in (old, new, Recipient("u-3"))] == [True, False, False]


def test_the_page_encoder_makes_exactly_the_reference_messages(engine: RuleEngine) -> None:
    local = {"kind": "local_time", "date": "2026-03-08", "time": "09:00"}
    for task_spec, run_no in ((spec(), 1), (spec(schedule=local), 5)):
        plan = RunPlan.of(7, run_no, NOW, task_spec, "UTC")
        page = [
            Recipient("u-1", ("s", "sms_ok"), {"phone": "+1555"}, attributes={"name": "Ada"}),
            Recipient("u-2", ("s",), {"phone": "+1556"}, timezone="Asia/Tokyo"),
            Recipient("u-3", ("s", "sms_ok"), {}, timezone="America/New_York"),
            Recipient("u-4", ("s", "sms_ok"), {"phone": "+1"}, app_versions=SEEN),
        ]
        reference, reached = plan_page(plan, page, engine, CHOOSERS, NOW, PLATFORMS)
        records, encoded_reached, made = PageEncoder(plan, engine, CHOOSERS, PLATFORMS).page(page, NOW)
        decoded = [ReachMessage.from_bytes(value) for channel in records for _key, value in records[channel]]
        key = lambda m: (m.user_id, m.channel)  # noqa: E731
        assert sorted(decoded, key=key) == sorted(reference, key=key)
        assert (encoded_reached, made) == (reached, len(reference))
        assert {ch: [k for k, _ in recs] for ch, recs in records.items()} == {
            ch: [m.user_id.encode() for m in reference if m.channel == ch] for ch in records
        }
