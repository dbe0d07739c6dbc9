"""Engagement tracking end to end: a worker and an API process on the real Kafka, MariaDB
and Redis, with REACH_TRACKING_BASE_URL pointing at the API.

E-mails arrive at the test SMTP server with tracked links and an open pixel; loading the
pixel, following a link, reading a site message, showing a pop-up and a delivery receipt
go through the API, the tracking topic and the tracking agent into message_engagement,
the worker's reach_engagement counter and GET /v1/stats/delivery. The engagement store's
idempotency is also checked on its own, against MariaDB.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.tracking import PIXEL_GIF
from models.engagement import EngagementStore
from models.storage import create_pool, migrate
from models.tracking import Kind, TrackingEvent
from models.tracking_links import LinkSigner
from reach.settings import REPO_ROOT, Settings
from tests.integration.conftest import RECEIPT_WEBHOOK_SECRET, Pipeline, start_pipeline, stop_pipeline
from tests.integration.harness import (
    Db,
    bearer,
    create_key,
    event,
    free_port,
    make_settings,
    produce_json,
    settings_env,
    unique_run_id,
    wait_until,
)
from tests.support.smtp_server import SmtpTestServer
from tests.support.tokens import HS256_SECRET, token

pytestmark = pytest.mark.integration

SHOP = "https://shop.reach.test"
TRACKED = re.compile(r"http://127\.0\.0\.1:\d+/v1/t/c/[A-Za-z0-9_-]+")
PIXEL = re.compile(r"http://127\.0\.0\.1:\d+/v1/t/o/[A-Za-z0-9_-]+\.gif")


class Tracked:
    """The pipeline, its API process, and reads of what they counted."""

    def __init__(self, pipeline: Pipeline, base_url: str, proc: subprocess.Popen[bytes]) -> None:
        self.pipeline, self.base_url, self.proc = pipeline, base_url, proc
        # No credential by default: the pixel and the links take none.
        self.http = httpx.Client(base_url=base_url, timeout=10, follow_redirects=False)
        self.stats_key = bearer(create_key(pipeline.settings, "stats:read"))

    def as_user(self, user_id: str) -> dict[str, str]:
        """The app's credential: the end user's own token."""
        return bearer(token(user_id))

    @property
    def settings(self) -> Settings:
        return self.pipeline.settings

    def worker_metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.settings.worker_metrics_port}/metrics", timeout=5).text
        return metric_in(text, name, labels)

    def api_metric(self, name: str, **labels: str) -> float:
        return metric_in(self.http.get("/metrics").text, name, labels)

    def stages(self, message_id: str) -> tuple[Any, ...]:
        rows = self.pipeline.db.query(
            "SELECT delivered_at, displayed_at, opened_at, clicked_at FROM message_engagement "
            "WHERE message_id = %s",
            [message_id],
        )
        return rows[0] if rows else (None, None, None, None)

    def funnel(self, message_id: str, channel: str) -> dict[str, Any]:
        """The stats group of the one message that completed in its millisecond."""
        [(completed_at,)] = self.pipeline.db.query(
            "SELECT MAX(completed_at) FROM delivery_results WHERE message_id = %s", [message_id]
        )
        params = {"from": completed_at, "to": completed_at + 1, "channel": channel}
        body = self.http.get("/v1/stats/delivery", params=params, headers=self.stats_key).json()
        [group] = body["groups"]
        return group


def metric_in(text: str, name: str, labels: dict[str, str]) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def start_api(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings_env(settings), "REACH_API_PORT": str(port)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reach.cli", "api", "--workers", "1"],
            env=env,
            stdout=log,
            stderr=log,
            cwd=REPO_ROOT,
        )

    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    try:
        wait_until(healthy, 60, "the API to answer /healthz")
        assert proc.poll() is None, log_path.read_text()[-3000:]
    except BaseException:
        proc.terminate()
        proc.wait(30)
        raise
    return proc


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, smtp_server: SmtpTestServer) -> Iterator[Tracked]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tmp_path_factory.mktemp("tracking")
    overrides = {"tracking_base_url": base, "tracking_keys": "k-new,k-old", "jwt_hs256_secret": HS256_SECRET}
    pipeline = start_pipeline(tmp, smtp_server, overrides)
    try:
        proc = start_api(pipeline.settings, port, tmp / "api.log")
        running = Tracked(pipeline, base, proc)
        try:
            yield running
        finally:
            running.http.close()
            proc.terminate()
            proc.wait(30)
    finally:
        stop_pipeline(pipeline)


def user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def add_profile(tracked: Tracked, who: str) -> str:
    """A profile with an e-mail address (without one, the example channel rule
    ``no-email-without-address`` narrows every message to the inbox); returns the address."""
    address, settings, db = f"{who}@reach.test", tracked.settings, tracked.pipeline.db
    profile = {"user_id": who, "segments": [], "contact": {"email": address}}
    produce_json(settings, settings.segments_topic, [profile])
    wait_until(lambda: db.query("SELECT 1 FROM user_profiles WHERE user_id = %s", [who]), 30, "the profile")
    return address


def send_mail(tracked: Tracked, n: int) -> tuple[str, Any]:
    """An e-mail from the tracked-mail rule to a new user: (its message id, the e-mail)."""
    who = user("mail")
    address = add_profile(tracked, who)
    settings, db = tracked.settings, tracked.pipeline.db
    produce_json(settings, settings.events_topic, [event(f"e-{who}", who, "test_tracked_mail", n=n)])
    [mail] = wait_until(lambda: tracked.pipeline.smtp.messages_to(address), 30, "the e-mail")
    [(message_id,)] = wait_until(
        lambda: db.query(
            "SELECT message_id FROM delivery_results WHERE user_id = %s AND status = 'sent'", [who]
        ),
        30,
        "the send result",
    )
    return message_id, mail.message


def send_inbox(tracked: Tracked, n: int) -> tuple[str, str, dict[str, Any]]:
    """A site message for a new user: (user, message id, the inbox item the API shows)."""
    who = user("inbox")
    settings, db = tracked.settings, tracked.pipeline.db
    produce_json(settings, settings.events_topic, [event(f"e-{who}", who, "test_tracked_inbox", n=n)])
    wait_until(
        lambda: db.query("SELECT 1 FROM delivery_results WHERE user_id = %s AND status = 'sent'", [who]),
        30,
        "the site message's send result",
    )
    [item] = tracked.http.get(f"/v1/users/{who}/inbox", headers=tracked.as_user(who)).json()["items"]
    return who, item["message_id"], item


def test_an_email_is_tracked_from_pixel_to_click_into_the_funnel(tracked: Tracked) -> None:
    message_id, mail = send_mail(tracked, 1)
    text = mail.get_body(("plain",)).get_content()
    page = mail.get_body(("html",)).get_content()
    assert f"{SHOP}/cart" not in text + page  # every shop link is tracked
    assert "/v1/unsubscribe/" in text and "/v1/unsubscribe/" in page  # reach's own link is not
    [pixel] = PIXEL.findall(page)
    [text_link] = TRACKED.findall(text)
    [html_link] = TRACKED.findall(page)
    opened = tracked.worker_metric("reach_engagement_total", kind="opened", channel="email")

    image = tracked.http.get(pixel)
    assert (image.status_code, image.headers["content-type"], image.content) == (200, "image/gif", PIXEL_GIF)
    assert "no-store" in image.headers["cache-control"]
    redirect = tracked.http.get(html_link)
    assert redirect.status_code == 302
    assert (
        redirect.headers["location"] == f"{SHOP}/cart?n=1&from=mail"
    )  # unescaped, as the browser follows it
    assert redirect.headers["referrer-policy"] == "no-referrer"
    assert tracked.http.get(text_link).headers["location"] == f"{SHOP}/cart?n=1"

    wait_until(lambda: all(tracked.stages(message_id)[2:]), 30, "opened and clicked recorded")
    funnel = tracked.funnel(message_id, "email")
    assert (funnel["provider"], funnel["platform"], funnel["sent"]) == ("smtp-local", "ios", 1)
    assert (funnel["displayed"], funnel["opened"], funnel["clicked"]) == (0, 1, 1)
    labels = {"channel": "email", "provider": "smtp-local", "platform": "ios", "category": "marketing"}
    wait_until(
        lambda: tracked.worker_metric("reach_engagement_total", kind="clicked", **labels) >= 1, 10, "counted"
    )
    wait_until(
        lambda: tracked.worker_metric("reach_engagement_total", kind="opened", **labels) == opened + 1,
        10,
        "the open counted by the send's channel, provider, platform and category",
    )


def test_a_repeated_open_and_click_count_once(tracked: Tracked) -> None:
    message_id, mail = send_mail(tracked, 2)
    page = mail.get_body(("html",)).get_content()
    [pixel], [link] = PIXEL.findall(page), TRACKED.findall(page)
    opened = tracked.worker_metric("reach_engagement_total", kind="opened", channel="email")
    repeats = tracked.worker_metric("reach_tracking_events_total", kind="opened", outcome="repeat")
    clicks = tracked.worker_metric("reach_tracking_events_total", kind="clicked", outcome="repeat")
    assert tracked.http.get(pixel).status_code == 200
    wait_until(lambda: tracked.stages(message_id)[2], 30, "the first open recorded")
    first_open = tracked.stages(message_id)[2]

    for _ in range(3):  # the e-mail opened again, and again: the pixel loads every time
        assert tracked.http.get(pixel).status_code == 200
    for _ in range(2):
        assert tracked.http.get(link).status_code == 302

    wait_until(
        lambda: (
            tracked.worker_metric("reach_tracking_events_total", kind="opened", outcome="repeat")
            >= repeats + 3
        ),
        30,
        "the repeated opens consumed",
    )
    wait_until(
        lambda: (
            tracked.worker_metric("reach_tracking_events_total", kind="clicked", outcome="repeat")
            >= clicks + 1
        ),
        30,
        "the repeated click consumed",
    )
    assert tracked.stages(message_id)[2] == first_open
    assert tracked.worker_metric("reach_engagement_total", kind="opened", channel="email") == opened + 1
    funnel = tracked.funnel(message_id, "email")
    assert (funnel["opened"], funnel["clicked"]) == (1, 1)


def test_a_site_message_is_opened_when_read_and_its_link_is_tracked(tracked: Tracked) -> None:
    who, message_id, item = send_inbox(tracked, 3)
    assert f"{SHOP}/offer" not in item["body"] and item["body"].endswith(".")
    [link] = TRACKED.findall(item["body"])
    for _ in range(2):
        read = tracked.http.post(f"/v1/users/{who}/inbox/{message_id}/read", headers=tracked.as_user(who))
        assert read.status_code == 204
    assert tracked.http.get(link).headers["location"] == f"{SHOP}/offer?n=3"
    wait_until(lambda: all(tracked.stages(message_id)[2:]), 30, "the read and the click recorded")
    funnel = tracked.funnel(message_id, "inbox")
    assert (funnel["provider"], funnel["opened"], funnel["clicked"]) == ("mariadb", 1, 1)


def test_a_popup_shown_on_screen_is_displayed_once(tracked: Tracked) -> None:
    who = user("popup")
    add_profile(tracked, who)
    settings, db = tracked.settings, tracked.pipeline.db
    produce_json(settings, settings.events_topic, [event(f"e-{who}", who, "test_popup", n=4)])
    app = tracked.as_user(who)
    [item] = wait_until(
        lambda: tracked.http.get(f"/v1/users/{who}/popups", headers=app).json()["items"], 30, "the pop-up"
    )
    message_id = item["message_id"]
    displayed = f"/v1/users/{who}/popups/{message_id}/displayed"
    assert tracked.http.post(displayed).status_code == 401  # the app's route needs the user's token
    assert tracked.http.post(displayed, headers=tracked.as_user("someone-else")).status_code == 403
    assert tracked.http.post(displayed, headers=app).status_code == 204
    assert tracked.http.post(displayed, headers=app).status_code == 204
    elsewhere = f"/v1/users/someone-else/popups/{message_id}/displayed"
    assert tracked.http.post(elsewhere, headers=tracked.as_user("someone-else")).status_code == 404
    wait_until(lambda: tracked.stages(message_id)[1], 30, "displayed recorded")
    wait_until(
        lambda: db.query("SELECT 1 FROM delivery_results WHERE message_id = %s", [message_id]),
        30,
        "its result",
    )
    funnel = tracked.funnel(message_id, "popup")
    assert (funnel["displayed"], funnel["opened"], funnel["clicked"]) == (1, 0, 0)


def test_a_delivery_receipt_becomes_a_delivered_tracking_event(tracked: Tracked) -> None:
    message_id, db = uuid.uuid4().hex[:24], tracked.pipeline.db
    now = int(time.time() * 1000)
    db.query(
        "INSERT INTO delivery_results (message_id, attempt, user_id, rule_id, channel, provider, status, "
        "platform, event_ts, attempted_at, completed_at, category) "
        "VALUES (%s, 1, 'u-r', 'r', 'receipts', 'webhook-receipts', 'sent', 'android', %s, %s, %s, %s)",
        [message_id, now, now, now, "marketing"],
    )
    labels = {
        "channel": "receipts",
        "provider": "webhook-receipts",
        "platform": "android",
        "category": "marketing",
    }
    before = tracked.worker_metric("reach_engagement_total", kind="delivered", **labels)
    raw = orjson.dumps({"message_id": message_id, "status": "delivered"})
    stamp = str(int(time.time()))
    signature = hmac.new(
        RECEIPT_WEBHOOK_SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256
    ).hexdigest()
    headers = {
        "content-type": "application/json",
        "x-reach-timestamp": stamp,
        "x-reach-signature": f"v1={signature}",
    }
    answer = tracked.http.post("/v1/receipts/webhook-receipts", content=raw, headers=headers)
    assert answer.status_code == 200 and answer.json()["delivered"] == 1
    wait_until(lambda: tracked.stages(message_id)[0], 30, "delivered recorded")
    wait_until(
        lambda: tracked.worker_metric("reach_engagement_total", kind="delivered", **labels) == before + 1,
        10,
        "delivered counted by the send's labels",
    )


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_only_links_reach_signed_redirect(tracked: Tracked) -> None:
    signer = LinkSigner([b"k-old"])  # a rotated-out key still verifies
    mid = uuid.uuid4().hex[:24]
    token = signer.click_token(mid, f"{SHOP}/ok")
    assert tracked.http.get(f"/v1/t/c/{token}").headers["location"] == f"{SHOP}/ok"
    refused = tracked.api_metric("reach_api_tracking_events_total", kind="clicked", result="refused")

    tampered = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    payload = b"c" + bytes([len(mid)]) + mid.encode() + b"https://evil.example/"
    attempts = [
        tampered,
        b64(bytes(12) + payload),  # an unsigned token naming an arbitrary URL
        LinkSigner([b"guessed"]).click_token(mid, "https://evil.example/"),
        signer.open_token(mid),  # a pixel token is no link
        "x",
    ]
    for bad in attempts:
        answer = tracked.http.get(f"/v1/t/c/{bad}")
        assert answer.status_code == 404 and "location" not in answer.headers, bad
        assert answer.json()["error"] == "not_found"
    after = tracked.api_metric("reach_api_tracking_events_total", kind="clicked", result="refused")
    assert after - refused == len(attempts)
    for elsewhere in ("/v1/t/c/x?url=https://evil.example/", "/v1/t/c/https%3A%2F%2Fevil.example%2F"):
        answer = tracked.http.get(elsewhere)
        assert answer.status_code == 404 and "location" not in answer.headers, elsewhere
    assert tracked.http.get(f"/v1/t/o/{token}.gif").status_code == 404  # a link token is no pixel


# --- the store on its own: idempotent and safe to run concurrently ----------------------------


@pytest.fixture(scope="module")
def store_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = make_settings(tmp_path_factory.mktemp("engagement"), unique_run_id(), "channels: {}\n")
    asyncio.run(migrate(settings))
    yield settings
    Db(settings).drop()


@pytest.fixture
async def store(store_settings: Settings) -> AsyncIterator[EngagementStore]:
    pool = await create_pool(store_settings, maxsize=4)
    yield EngagementStore(pool)
    pool.close()
    await pool.wait_closed()


async def test_applying_the_same_events_again_records_and_returns_nothing(store: EngagementStore) -> None:
    mid = uuid.uuid4().hex[:24]
    events = [
        TrackingEvent(mid, Kind.OPENED, 20),
        TrackingEvent(mid, Kind.OPENED, 10),
        TrackingEvent(mid, Kind.CLICKED, 30),
    ]
    first = await store.apply(events)
    assert sorted((f.kind, f.at, f.labels) for f in first.firsts) == [
        (Kind.CLICKED, 30, None),
        (Kind.OPENED, 10, None),
    ]
    assert first.repeats == {Kind.OPENED: 1}
    again = await store.apply([*events, TrackingEvent(mid, Kind.OPENED, 5)])  # even an earlier open
    assert again.firsts == [] and again.repeats == {Kind.OPENED: 3, Kind.CLICKED: 1}
    assert await store.stages(mid) == {Kind.OPENED: 10, Kind.CLICKED: 30}


async def test_concurrent_consumers_count_each_stage_once(
    store: EngagementStore, store_settings: Settings
) -> None:
    ids = sorted(uuid.uuid4().hex[:24] for _ in range(200))
    events = [TrackingEvent(mid, kind, 1) for mid in ids for kind in (Kind.DELIVERED, Kind.OPENED)]
    other = EngagementStore(await create_pool(store_settings, maxsize=4))
    try:
        results = await asyncio.gather(
            store.apply(events), other.apply(list(reversed(events))), store.apply(events)
        )
    finally:
        other.pool.close()
        await other.pool.wait_closed()
    firsts = [(f.message_id, f.kind) for r in results for f in r.firsts]
    assert len(firsts) == len(set(firsts)) == len(events)
