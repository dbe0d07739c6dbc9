"""Pop-ups: the store and the provider against the real MariaDB (a database of
their own), then the whole path: event -> pipeline -> popups table -> API."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiomysql
import httpx
import orjson
import pytest

from channels.base import Delivery, OutcomeKind, ProviderConfig, ProviderContext, Rendered
from channels.popup import PopupProvider
from models.messages import ReachMessage
from models.popups import PopupItem, PopupStore
from models.storage import create_pool, migrate
from reach.settings import Settings
from tests.integration.conftest import Api, Pipeline
from tests.integration.harness import (
    Db,
    free_port,
    make_settings,
    produce_json,
    unique_run_id,
    wait_until,
)

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
HOUR = 3_600_000


# --- the store and the provider, on a database of this module's own ---------------------------


@pytest.fixture(scope="module")
def store_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("popups"), unique_run_id(), "channels: {}\n")
    asyncio.run(migrate(settings))
    yield settings
    Db(settings).drop()


@pytest.fixture
async def pool(store_settings: Settings) -> AsyncIterator[Any]:
    pool = await create_pool(store_settings, maxsize=10)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture
def store(pool: Any) -> PopupStore:
    return PopupStore(pool)


@pytest.fixture
def user() -> str:
    """A user of this test alone: tests share the module's database."""
    return "u-" + uuid.uuid4().hex[:12]


def new_id() -> str:
    return uuid.uuid4().hex[:24]


def popup(user: str, **fields: Any) -> PopupItem:
    values: dict[str, Any] = {
        "message_id": new_id(),
        "user_id": user,
        "rule_id": "cart-abandoned-popup",
        "template": "cart-popup",
        "title": "Your cart",
        "body": "2 items are waiting.",
        "priority": 5,
        "show_from": T0,
        "show_until": T0 + HOUR,
        "show_once": False,
        "created_at": T0,
    }
    values.update(fields)
    return PopupItem(**values)


def ids(items: list[PopupItem]) -> list[str]:
    return [i.message_id for i in items]


async def test_active_is_the_open_window_highest_priority_first_then_newest(
    store: PopupStore, user: str
) -> None:
    low = popup(user, priority=2)
    high_old = popup(user, priority=8, show_from=T0 - HOUR)
    high_new = popup(user, priority=8)
    ends_now = popup(user, show_until=T0 + 1000)
    not_yet = popup(user, show_from=T0 + 1001)
    someone_else = popup("other-" + user)
    await store.insert([low, high_old, high_new, ends_now, not_yet, someone_else])

    assert ids(await store.active(user, T0 + 1000 - 1, 10)) == ids([high_new, high_old, ends_now, low])
    # show_from is inclusive, show_until exclusive
    assert ids(await store.active(user, T0 + 1000, 10)) == ids([high_new, high_old, low])
    assert ids(await store.active(user, T0 + 1001, 10)) == ids([high_new, high_old, not_yet, low])
    assert ids(await store.active(user, T0 + 1000, 2)) == ids([high_new, high_old])
    assert await store.active(user, T0 + HOUR, 10) == []
    assert await store.active("nobody", T0, 10) == []


async def test_a_show_once_popup_is_returned_by_one_read_only(store: PopupStore, user: str) -> None:
    once, always = popup(user, show_once=True, priority=9), popup(user, show_once=False)
    await store.insert([once, always])

    first = await store.active(user, T0 + 5, 10)
    assert ids(first) == ids([once, always]) and first[0].shown_at == T0 + 5
    assert ids(await store.active(user, T0 + 6, 10)) == ids([always])
    assert ids(await store.active(user, T0 + 7, 10)) == ids([always])


async def test_a_show_once_popup_past_the_limit_is_not_used_up(store: PopupStore, user: str) -> None:
    first, second = popup(user, show_once=True, priority=9), popup(user, show_once=True, priority=1)
    await store.insert([first, second])
    assert ids(await store.active(user, T0, 1)) == ids([first])
    assert ids(await store.active(user, T0, 1)) == ids([second])
    assert await store.active(user, T0, 1) == []


async def test_concurrent_reads_return_a_show_once_popup_once_between_them(
    store: PopupStore, user: str
) -> None:
    once, always = popup(user, show_once=True), popup(user, show_once=False, priority=1)
    await store.insert([once, always])
    reads = await asyncio.gather(*[store.active(user, T0, 10) for _ in range(10)])
    assert sum(once.message_id in ids(r) for r in reads) == 1
    assert all(always.message_id in ids(r) for r in reads)


async def test_dismiss_hides_it_is_idempotent_and_knows_only_the_users_popups(
    store: PopupStore, pool: Any, user: str
) -> None:
    shown = popup(user)
    await store.insert([shown])
    assert await store.dismiss(user, shown.message_id, T0 + 10)
    assert await store.active(user, T0 + 20, 10) == []
    assert await store.dismiss(user, shown.message_id, T0 + 30)  # again: still fine
    assert await column(pool, shown.message_id, "dismissed_at") == T0 + 10  # the first time stays
    assert not await store.dismiss(user, new_id(), T0)
    assert not await store.dismiss("other-" + user, shown.message_id, T0)


async def test_a_replayed_insert_changes_nothing(store: PopupStore, pool: Any, user: str) -> None:
    once = popup(user, show_once=True)
    await store.insert([once])
    assert ids(await store.active(user, T0, 10)) == ids([once])
    await store.dismiss(user, once.message_id, T0 + 1)
    await store.insert([popup(user, message_id=once.message_id, title="changed", show_until=T0 + 9 * HOUR)])
    stored = await row(pool, once.message_id)
    assert (stored["title"], stored["show_until"], stored["shown_at"], stored["dismissed_at"]) == (
        "Your cart",
        T0 + HOUR,
        T0,
        T0 + 1,
    )


async def test_many_rows_are_inserted_in_chunks(store: PopupStore, pool: Any, user: str) -> None:
    await store.insert([popup(user, priority=n % 10) for n in range(1200)])
    assert await count(pool, user) == 1200
    assert [i.priority for i in await store.active(user, T0, 50)] == [9] * 50


# --- the provider on the real database ---


def delivery(user: str, event_id: str, **properties: Any) -> Delivery:
    message = ReachMessage(
        message_id=new_id(),
        user_id=user,
        rule_id="cart-abandoned-popup",
        template="cart-popup",
        channel="popup",
        provider="mariadb",
        priority=6,
        event_id=event_id,
        event_name="cart_abandoned",
        event_ts=T0,
        created_ts=T0,
        variables={"properties": properties},
        contact={},
    )
    return Delivery(message, Rendered(title="Your cart", text="2 items are waiting."))


async def provider(pool: Any, **options: Any) -> PopupProvider:
    started = PopupProvider(ProviderConfig("mariadb", "popup", options=options), ProviderContext(pool))
    await started.setup()
    return started


async def test_the_provider_stores_good_deliveries_and_refuses_bad_ones(pool: Any, user: str) -> None:
    sender = await provider(pool, display_seconds=60)
    good, bad = delivery(user, "e-1"), delivery(user, "e-2", popup_until="soon")
    outcomes = await sender.send_batch([good, bad])
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.SENT, ""),
        (OutcomeKind.PERMANENT, "bad_popup_property"),
    ]
    assert outcomes[0].provider_message_id == good.message.message_id
    stored = await row(pool, good.message.message_id)
    assert (stored["show_from"], stored["show_until"], stored["show_once"], stored["priority"]) == (
        T0,
        T0 + 60_000,
        1,
        6,
    )
    again = await sender.send_batch([good])  # a replay
    assert again[0].kind is OutcomeKind.SENT and await count(pool, user) == 1


async def test_the_provider_asks_for_a_retry_when_the_database_is_down(
    store_settings: Settings, user: str
) -> None:
    # minsize=0: the pool connects on first use, to a port where nothing listens.
    dead = await aiomysql.create_pool(host="127.0.0.1", port=free_port(), user="x", minsize=0, maxsize=1)
    try:
        sender = await provider(dead)
        outcomes = await sender.send_batch([delivery(user, "e-1"), delivery(user, "e-2", popup_from=[])])
    finally:
        dead.close()
        await dead.wait_closed()
    assert [(o.kind, o.code) for o in outcomes] == [
        (OutcomeKind.RETRY, "db_unavailable"),
        (OutcomeKind.PERMANENT, "bad_popup_property"),
    ]
    assert outcomes[0].retry_after == 1.0


async def row(pool: Any, message_id: str) -> dict[str, Any]:
    async with pool.acquire() as conn, conn.cursor(aiomysql.DictCursor) as cur:
        await cur.execute("SELECT * FROM popups WHERE message_id = %s", [message_id])
        return dict(await cur.fetchone())


async def column(pool: Any, message_id: str, name: str) -> Any:
    return (await row(pool, message_id))[name]


async def count(pool: Any, user: str) -> int:
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("SELECT COUNT(*) FROM popups WHERE user_id = %s", [user])
        (n,) = await cur.fetchone()
    return int(n)


# --- through the pipeline and the API -----------------------------------------------------------


def add_user(p: Pipeline, user: str) -> str:
    """A profile with an e-mail address: the example channel rule ``no-email-without-address``
    narrows a user without one to [inbox], which would leave a pop-up trigger unroutable."""
    produce_json(
        p.settings,
        p.settings.segments_topic,
        [{"user_id": user, "segments": [], "contact": {"email": f"{user}@x.test"}}],
    )
    wait_until(
        lambda: p.db.query("SELECT 1 FROM user_profiles WHERE user_id = %s", [user]), 30, "the profile"
    )
    return user


def post_event(api: Api, event_id: str, user: str, name: str = "test_popup", **properties: Any) -> None:
    body = {"event_id": event_id, "user_id": user, "name": name, "ts": now_ms(), "properties": properties}
    response = httpx.post(
        f"{api.base_url}/v1/events",
        content=orjson.dumps(body),
        headers={**api.headers, "content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 202, response.text


def now_ms() -> int:
    return int(time.time() * 1000)


def get_popups(api: Api, user: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{api.base_url}/v1/users/{user}/popups", params=params, headers=api.headers, timeout=5
    )
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def dismiss(api: Api, user: str, message_id: str) -> httpx.Response:
    return httpx.post(
        f"{api.base_url}/v1/users/{user}/popups/{message_id}/dismiss", headers=api.headers, timeout=5
    )


def results(p: Pipeline, user: str) -> list[tuple[Any, ...]]:
    return p.db.query(
        "SELECT status, error_code FROM delivery_results WHERE user_id = %s AND channel = 'popup' "
        "ORDER BY completed_at",
        [user],
    )


def wait_results(p: Pipeline, user: str, n: int) -> list[tuple[Any, ...]]:
    return wait_until(lambda: len(results(p, user)) >= n and results(p, user), 30, f"{n} pop-up results")


def test_a_show_once_popup_is_shown_by_the_first_read_only(pipeline: Pipeline, api: Api) -> None:
    user = add_user(pipeline, "popup-once-1")
    post_event(api, "po-1", user, n=1)
    [shown] = wait_until(lambda: get_popups(api, user), 30, "the pop-up")
    assert (shown["title"], shown["body"], shown["priority"]) == ("popup 1", f"popup for {user}", 5)
    assert shown["show_until"] - shown["show_from"] == 7 * 24 * HOUR
    assert set(shown) == {
        "message_id",
        "title",
        "body",
        "priority",
        "show_from",
        "show_until",
        "type",
        "upgrade",
    }
    assert (shown["type"], shown["upgrade"]) == ("message", None)
    assert get_popups(api, user) == []
    assert results(pipeline, user) == [("sent", "")]


def test_popups_come_highest_priority_first(pipeline: Pipeline, api: Api) -> None:
    user = add_user(pipeline, "popup-priority-1")
    post_event(api, "pp-1", user, n=1, popup_show_once=False)
    post_event(api, "pp-2", user, "test_popup_urgent", n=2, popup_show_once=False)
    post_event(api, "pp-3", user, n=3, popup_show_once=False)
    items = wait_until(lambda: len(get_popups(api, user)) == 3 and get_popups(api, user), 30, "3 pop-ups")
    assert (items[0]["title"], items[0]["priority"]) == ("popup 2", 8)
    ties = [(i["show_from"], i["message_id"]) for i in items[1:]]
    assert ties == sorted(ties, reverse=True)  # then the newest
    assert [i["title"] for i in get_popups(api, user, limit=1)] == ["popup 2"]


def test_popups_outside_their_window_are_not_returned(pipeline: Pipeline, api: Api) -> None:
    user, now = add_user(pipeline, "popup-window-1"), now_ms()
    post_event(api, "pw-later", user, n=1, popup_from=now + HOUR)
    post_event(api, "pw-over", user, n=2, popup_from=now - 2 * HOUR, popup_until=now - HOUR)
    post_event(api, "pw-short", user, n=3, popup_show_once=False, popup_until=now + 6000)
    rows = wait_results(pipeline, user, 3)
    assert sorted(rows) == [("failed", "popup_expired"), ("sent", ""), ("sent", "")]
    assert [i["title"] for i in wait_until(lambda: get_popups(api, user), 30, "the short one")] == ["popup 3"]
    wait_until(lambda: get_popups(api, user) == [], 30, "the short window to end")
    later = pipeline.db.query("SELECT show_from FROM popups WHERE user_id = %s AND title = 'popup 1'", [user])
    assert later == [(now + HOUR,)]  # stored, waiting for its window


def test_a_dismissed_popup_is_not_returned_again(pipeline: Pipeline, api: Api) -> None:
    user = add_user(pipeline, "popup-dismiss-1")
    post_event(api, "pd-1", user, n=1, popup_show_once=False)
    [shown] = wait_until(lambda: get_popups(api, user), 30, "the pop-up")
    response = dismiss(api, user, shown["message_id"])
    assert response.status_code == 204 and response.content == b""
    assert get_popups(api, user) == []
    assert dismiss(api, user, shown["message_id"]).status_code == 204  # idempotent


def test_dismissing_an_unknown_popup_is_a_404_json_error(api: Api) -> None:
    response = dismiss(api, "popup-nobody", "0" * 24)
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    too_many = httpx.get(
        f"{api.base_url}/v1/users/u/popups", params={"limit": 1000}, headers=api.headers, timeout=5
    )
    assert too_many.status_code == 422 and too_many.json()["error"] == "invalid_request"


def test_a_replayed_event_makes_one_popup(pipeline: Pipeline, api: Api) -> None:
    user = add_user(pipeline, "popup-replay-1")
    post_event(api, "pr-1", user, n=1, popup_show_once=False)
    post_event(api, "pr-1", user, n=1, popup_show_once=False)
    post_event(api, "pr-marker", user, n=2, popup_show_once=False)  # same partition: after the replay
    wait_until(lambda: len(get_popups(api, user)) == 2, 30, "the marker pop-up")
    assert sorted(i["title"] for i in get_popups(api, user)) == ["popup 1", "popup 2"]
    assert pipeline.db.query("SELECT COUNT(*) FROM popups WHERE user_id = %s", [user]) == [(2,)]


def test_the_popup_endpoints_are_documented(api: Api) -> None:
    paths = httpx.get(f"{api.base_url}/openapi.json", timeout=5).json()["paths"]
    assert {"/v1/users/{user_id}/popups", "/v1/users/{user_id}/popups/{message_id}/dismiss"} <= set(paths)


def test_a_popup_older_apps_cannot_show_falls_back_as_declared(pipeline: Pipeline, api: Api) -> None:
    user = add_user(pipeline, "popup-version-1")
    for n, version in enumerate(["2.1.0", "1.6", "1.2"], 1):
        body = {
            "event_id": f"pv-{n}",
            "user_id": user,
            "name": "test_popup_by_version",
            "ts": now_ms(),
            "properties": {"n": n, "popup_show_once": False},
            "device": {"platform": "ios", "app_version": version},
        }
        response = httpx.post(f"{api.base_url}/v1/events", content=orjson.dumps(body), timeout=10,
                              headers={**api.headers, "content-type": "application/json"})  # fmt: skip
        assert response.status_code == 202, response.text
    rows = wait_results(pipeline, user, 3)
    assert sorted(rows) == [("failed", "app_version_too_old"), ("sent", ""), ("sent", "")]
    titles = sorted(i["title"] for i in get_popups(api, user))
    assert titles == ["classic popup 2", "new popup 1"]
