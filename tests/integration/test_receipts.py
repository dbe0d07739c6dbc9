"""Delivery receipts and delivery stats through the real API app and the real MariaDB.

The app is built with ``create_app`` and driven in-process (``httpx.ASGITransport``)
with its lifespan running, on a database of its own and a channels file written
here, so the receipt formats are tested before the SMS provider types exist in
the registry. One test drives the ``reach api`` subprocess of the shared pipeline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import random
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pymysql
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.receipt_config import load_endpoints
from api.receipts import ReceiptService
from models import receipts as receipts_model
from models.messages import DeliveryResult, DeliveryStatus
from models.receipts import Receipt, ReceiptStatus, ReceiptStore
from models.storage import ResultStore, create_pool, migrate
from reach.clock import SystemClock
from reach.metrics import ApiMetrics
from reach.settings import Settings
from tests.integration.conftest import RECEIPT_TOKEN, RECEIPT_TWILIO_TOKEN, Api, Pipeline
from tests.integration.harness import Db, bearer, new_key, unique_run_id
from tests.support.providers.twilio import SharedKey, TwilioServer

pytestmark = pytest.mark.integration

TWILIO_TOKEN = "twilio-auth-token-for-tests"
ALIYUN_TOKEN = "aliyun-receipt-token-0123456789"
TENCENT_TOKEN = "tencent-receipt-token-9876543210"
WEBHOOK_SECRET = "webhook-secret-for-tests"
BASE = "http://reach.test"
SHARED_KEY = SharedKey()
TWILIO = TwilioServer(auth_token=TWILIO_TOKEN)  # not started: it only signs webhooks here

CHANNELS = f"""
channels:
  sms:
    window_seconds: 1
    providers:
      - name: twilio-main
        type: twilio_sms
        options:
          account_sid: AC0000
          auth_token: "${{REACH_TEST_TWILIO_TOKEN}}"
      - name: twilio-proxied
        type: twilio_sms
        options:
          auth_token: "{TWILIO_TOKEN}"
          receipt_url: "https://public.example/reach/v1/receipts/twilio-proxied"
      - name: twilio-shared
        type: twilio_sms
        options:
          auth_token: "{TWILIO_TOKEN}"
          webhook_shared_keys: {{"{SHARED_KEY.sid}": "{SHARED_KEY.secret}"}}
      - name: twilio eu
        type: twilio_sms
        options: {{auth_token: "{TWILIO_TOKEN}"}}
      - name: aliyun-main
        type: aliyun_sms
        options: {{access_key_secret: x, receipt_token: "{ALIYUN_TOKEN}"}}
      - name: tencent-main
        type: tencent_sms
        options: {{receipt_token: "{TENCENT_TOKEN}"}}
      - name: aliyun-no-token
        type: aliyun_sms
  hooks:
    window_seconds: 1
    providers:
      - name: crm-hook
        type: webhook
        options: {{base_url: "https://hooks.example", secret: "{WEBHOOK_SECRET}"}}
  email:
    window_seconds: 1
    providers:
      - name: smtp-local
        type: smtp
        options: {{host: 127.0.0.1, password: "${{REACH_UNSET_SMTP_PASSWORD}}"}}
"""


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    tmp = tmp_path_factory.mktemp("receipts")
    (tmp / "channels.yaml").write_text(CHANNELS)
    run = unique_run_id()
    built = Settings(
        mysql_database=f"reach_{run}", topic_prefix=f"{run}.", channels_file=tmp / "channels.yaml"
    )
    asyncio.run(migrate(built))
    yield built
    Db(built).drop()


@pytest.fixture
def db(settings: Settings) -> Db:
    return Db(settings)


@pytest.fixture
async def client(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with its lifespan running (pool, producer, receipt service)."""
    monkeypatch.setenv("REACH_TEST_TWILIO_TOKEN", TWILIO_TOKEN)
    headers = bearer(await new_key(settings, "stats:read"))  # receipts need none: their signatures
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as http:
            yield http


def new_id() -> str:
    return uuid.uuid4().hex[:24]


def seed(
    db: Db,
    message_id: str,
    *,
    status: str = "sent",
    provider: str = "twilio-main",
    channel: str = "sms",
    platform: str = "ios",
    pmid: str = "",
    attempt: int = 1,
    completed_at: int = 1_800_000_000_000,
    user_id: str = "u-1",
) -> None:
    db.query(
        "INSERT INTO delivery_results (message_id, attempt, user_id, rule_id, channel, provider, status, "
        "platform, provider_message_id, event_ts, attempted_at, completed_at) "
        "VALUES (%s, %s, %s, 'r-1', %s, %s, %s, %s, %s, %s, %s, %s)",
        [message_id, attempt, user_id, channel, provider, status, platform, pmid] + [completed_at] * 3,
    )


def row(db: Db, message_id: str, attempt: int = 1) -> tuple[Any, ...]:
    [found] = db.query(
        "SELECT status, error_code, receipt_at FROM delivery_results WHERE message_id = %s AND attempt = %s",
        [message_id, attempt],
    )
    return found


async def metric(http: httpx.AsyncClient, name: str, **labels: str) -> float:
    text = (await http.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


# Twilio signs the URL it calls followed by every POST parameter name and value,
# sorted by name: base64(HMAC-SHA1(auth token, that string)).
def twilio_post(
    http: httpx.AsyncClient,
    params: dict[str, str],
    token: str = TWILIO_TOKEN,
    provider: str = "twilio-main",
    query: str = "",
    signed_url: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    url = f"{BASE}/v1/receipts/{provider}{query}"
    signed = (signed_url or url) + "".join(name + params[name] for name in sorted(params))
    signature = base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    return http.post(
        url,
        content=urllib.parse.urlencode(params),
        headers={
            "content-type": "application/x-www-form-urlencoded",
            "x-twilio-signature": signature,
            **(headers or {}),
        },
    )


def twilio_status(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC0000",
        "From": "+15550001111",
        "To": "+15550002222",
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def json_post(http: httpx.AsyncClient, provider: str, body: Any, token: str | None) -> Any:
    query = f"?token={token}" if token is not None else ""
    return http.post(
        f"/v1/receipts/{provider}{query}",
        content=orjson.dumps(body),
        headers={"content-type": "application/json"},
    )


def webhook_post(
    http: httpx.AsyncClient, body: Any, *, secret: str = WEBHOOK_SECRET, at: int | None = None
) -> Any:
    raw = orjson.dumps(body)
    timestamp = str(at if at is not None else int(time.time()))
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    headers = {
        "content-type": "application/json",
        "x-reach-timestamp": timestamp,
        "x-reach-signature": f"v1={signature}",
    }
    return http.post("/v1/receipts/crm-hook", content=raw, headers=headers)


# --- Twilio -----------------------------------------------------------------------------------


async def test_twilio_signed_callback_moves_sent_to_delivered(client: httpx.AsyncClient, db: Db) -> None:
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, pmid=sid, platform="android")
    response = await twilio_post(client, twilio_status(sid, "delivered"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    status, error_code, receipt_at = row(db, mid)
    assert (status, error_code) == ("delivered", "") and receipt_at is not None
    labels = {"channel": "sms", "provider": "twilio-main", "platform": "android"}
    assert await metric(client, "reach_receipts_total", status="delivered", **labels) == 1


async def test_twilio_callback_twice_is_applied_and_counted_once(client: httpx.AsyncClient, db: Db) -> None:
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, pmid=sid)
    first = await twilio_post(client, twilio_status(sid, "undelivered", ErrorCode="30003"))
    second = await twilio_post(client, twilio_status(sid, "undelivered", ErrorCode="30003"))
    assert first.status_code == second.status_code == 200
    assert row(db, mid)[:2] == ("failed", "30003")
    assert db.query("SELECT COUNT(*) FROM receipts WHERE provider_message_id = %s", [sid]) == [(1,)]
    assert await metric(client, "reach_receipts_total", provider="twilio-main", status="failed") == 1
    assert await metric(client, "reach_receipts_total", provider="twilio-main", status="duplicate") == 1


async def test_twilio_out_of_order_callbacks_never_move_a_final_row(
    client: httpx.AsyncClient, db: Db
) -> None:
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, pmid=sid)
    for status in ("delivered", "sent", "queued", "failed"):
        assert (await twilio_post(client, twilio_status(sid, status, ErrorCode="30008"))).status_code == 200
    assert row(db, mid)[:2] == ("delivered", "")
    assert await metric(client, "reach_receipts_total", provider="twilio-main", status="progress") == 2
    assert await metric(client, "reach_receipts_total", provider="twilio-main", status="stale") == 1
    assert db.query(
        "SELECT outcome FROM receipts WHERE provider_message_id = %s ORDER BY outcome", [sid]
    ) == [
        ("applied",),
        ("stale",),
    ]


async def test_twilio_bad_signature_is_refused_and_changes_nothing(client: httpx.AsyncClient, db: Db) -> None:
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, pmid=sid)
    forged = await twilio_post(client, twilio_status(sid, "delivered"), token="not-the-auth-token")
    unsigned = await client.post(
        "/v1/receipts/twilio-main",
        content=urllib.parse.urlencode(twilio_status(sid, "delivered")),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert forged.status_code == unsigned.status_code == 403
    assert forged.json()["error"] == "bad_signature"
    assert row(db, mid) == ("sent", "", None)
    assert db.query("SELECT COUNT(*) FROM receipts WHERE provider_message_id = %s", [sid]) == [(0,)]
    assert (
        await metric(client, "reach_receipts_rejected_total", provider="twilio-main", reason="bad_signature")
        == 2
    )


@pytest.mark.parametrize("shared_key", [None, SHARED_KEY], ids=["auth-token-sha1", "shared-key-sha256"])
async def test_twilio_signs_callbacks_under_either_scheme(
    client: httpx.AsyncClient, db: Db, shared_key: SharedKey | None
) -> None:
    """Twilio signs with the auth token (HMAC-SHA1), or, where a Webhook Rule matches the
    URL, with the Setting's SharedKey and algorithm: each is verified, neither forgeable."""
    mid, forged_mid, sid, forged_sid = new_id(), new_id(), f"SM{uuid.uuid4().hex}", f"SM{uuid.uuid4().hex}"
    seed(db, mid, provider="twilio-shared", pmid=sid)
    seed(db, forged_mid, provider="twilio-shared", pmid=forged_sid)
    url = f"{BASE}/v1/receipts/twilio-shared"
    hook = TWILIO.webhook(url, twilio_status(sid, "delivered"), shared_key)
    response = await client.post(url, content=hook.body, headers=hook.headers)
    assert response.status_code == 200, response.text
    assert row(db, mid)[0] == "delivered"
    # the same signature over another message's callback
    signed = TWILIO.webhook(url, twilio_status(forged_sid, "delivered"), shared_key)
    forged = await client.post(
        url, content=signed.body.replace(b"=delivered", b"=failed"), headers=signed.headers
    )
    assert forged.status_code == 403 and forged.json()["error"] == "bad_signature"
    assert row(db, forged_mid)[0] == "sent"


async def test_twilio_callback_url_may_carry_the_message_id(client: httpx.AsyncClient, db: Db) -> None:
    """status_callback_url "...?message_id={message_id}" finds a message whose MessageSid was lost."""
    mid = new_id()
    seed(db, mid, status="unknown")  # the send's answer was lost: no MessageSid recorded
    response = await twilio_post(
        client, twilio_status("SMnever-recorded", "delivered"), query=f"?message_id={mid}"
    )
    assert response.status_code == 200
    assert row(db, mid)[0] == "delivered"


async def test_twilio_behind_a_proxy_is_checked_against_receipt_url(
    client: httpx.AsyncClient, db: Db
) -> None:
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, provider="twilio-proxied", pmid=sid)
    public = f"https://public.example/reach/v1/receipts/twilio-proxied?message_id={mid}"
    as_seen = await twilio_post(
        client, twilio_status(sid, "delivered"), provider="twilio-proxied", query=f"?message_id={mid}"
    )
    assert as_seen.status_code == 403  # signed over the URL the API sees, not the one Twilio called
    response = await twilio_post(
        client,
        twilio_status(sid, "delivered"),
        provider="twilio-proxied",
        query=f"?message_id={mid}",
        signed_url=public,
    )
    assert response.status_code == 200
    assert row(db, mid)[0] == "delivered"


async def test_twilio_provider_names_needing_percent_encoding_verify(
    client: httpx.AsyncClient, db: Db
) -> None:
    """Twilio signs the URL as it called it, %20 and all; the decoded path never matched."""
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, provider="twilio eu", pmid=sid)
    response = await twilio_post(client, twilio_status(sid, "delivered"), provider="twilio%20eu")
    assert response.status_code == 200, response.text
    assert row(db, mid)[0] == "delivered"


async def test_twilio_behind_a_proxy_is_checked_against_the_forwarded_host(
    client: httpx.AsyncClient, db: Db
) -> None:
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, pmid=sid)
    forwarded = {"x-forwarded-host": "sms.public.example", "x-forwarded-proto": "https"}
    public = "https://sms.public.example/v1/receipts/twilio-main"
    direct = await twilio_post(client, twilio_status(sid, "delivered"), headers=forwarded)
    assert direct.status_code == 403  # signed for the API's own host, not the one Twilio called
    response = await twilio_post(
        client, twilio_status(sid, "delivered"), signed_url=public, headers=forwarded
    )
    assert response.status_code == 200, response.text
    assert row(db, mid)[0] == "delivered"


async def test_twilio_callback_with_an_unparsable_host_is_a_json_403(client: httpx.AsyncClient) -> None:
    """The Host header is the client's: a port that does not parse must not become a 500."""
    for host in ("reach.test:abc", "[::1"):
        response = await client.post(
            "/v1/receipts/twilio-main",
            content=urllib.parse.urlencode(twilio_status("SM1", "delivered")),
            headers={
                "host": host,
                "content-type": "application/x-www-form-urlencoded",
                "x-twilio-signature": "AAAA",
            },
        )
        assert response.status_code == 403 and response.json()["error"] == "bad_signature"


async def test_twilio_signed_but_malformed_callback_is_a_400(client: httpx.AsyncClient) -> None:
    response = await twilio_post(client, {"AccountSid": "AC0000", "MessageStatus": "delivered"})
    assert response.status_code == 400
    assert "MessageSid" in response.json()["message"]


async def test_failed_receipt_survives_a_replayed_send_result(
    client: httpx.AsyncClient, db: Db, settings: Settings
) -> None:
    """The worker may write its "sent" result again (at-least-once): a receipt's state stays."""
    mid, sid = new_id(), f"SM{uuid.uuid4().hex}"
    seed(db, mid, pmid=sid)
    await twilio_post(client, twilio_status(sid, "failed", ErrorCode="30006"))
    replay = DeliveryResult(
        mid,
        1,
        "u-1",
        "r-1",
        "sms",
        "twilio-main",
        DeliveryStatus.SENT,
        "ios",
        1,
        1,
        1,
        provider_message_id=sid,
    )
    pool = await create_pool(settings)
    try:
        await ResultStore(pool).upsert([replay])
    finally:
        pool.close()
        await pool.wait_closed()
    assert row(db, mid)[:2] == ("failed", "30006")


# --- Aliyun and Tencent -----------------------------------------------------------------------


def aliyun_report(biz_id: str, success: bool, out_id: str = "", phone: str = "13800000000") -> dict[str, Any]:
    return {
        "phone_number": phone,
        "send_time": "2026-11-28 10:00:00",
        "report_time": "2026-11-28 10:00:05",
        "success": success,
        "err_code": "DELIVERED" if success else "MK:0001",
        "err_msg": "用户接收成功" if success else "空号",
        "sms_size": "1",
        "biz_id": biz_id,
        "out_id": out_id,
    }


async def test_aliyun_report_batch_applies_each_item(client: httpx.AsyncClient, db: Db) -> None:
    ok, bad, by_out_id = new_id(), new_id(), new_id()
    seed(db, ok, provider="aliyun-main", pmid="BIZ-ok")
    seed(db, bad, provider="aliyun-main", pmid="BIZ-bad")
    seed(db, by_out_id, provider="aliyun-main", status="unknown")  # answer lost: no BizId recorded
    batch = [
        aliyun_report("BIZ-ok", True, out_id=ok),
        aliyun_report("BIZ-bad", False, out_id=bad),
        aliyun_report("BIZ-never-recorded", True, out_id=by_out_id),
        aliyun_report("BIZ-of-another-system", True),
    ]
    response = await json_post(client, "aliyun-main", batch, ALIYUN_TOKEN)
    assert response.status_code == 200
    assert response.json() == {"code": 0, "msg": "成功"}
    assert row(db, ok)[0] == "delivered"
    assert row(db, bad)[:2] == ("failed", "MK:0001")
    assert row(db, by_out_id)[0] == "delivered"
    assert await metric(client, "reach_receipts_total", provider="aliyun-main", status="unmatched") == 1


async def test_aliyun_batch_send_reports_are_told_apart_by_phone(client: httpx.AsyncClient, db: Db) -> None:
    """SendBatchSms gives one BizId to every number; the report's phone picks the message."""
    first, second = new_id(), new_id()
    for user, phone in (("batch-user-1", "+86 138-0000-0001"), ("batch-user-2", "+8613800000002")):
        db.query(
            "INSERT INTO user_profiles (user_id, segments, contact, timezone, updated_at) "
            "VALUES (%s, '[]', %s, '', 1)",
            [user, orjson.dumps({"phone": phone}).decode()],
        )
    seed(db, first, provider="aliyun-main", pmid="BIZ-batch", user_id="batch-user-1")
    seed(db, second, provider="aliyun-main", pmid="BIZ-batch", user_id="batch-user-2")
    batch = [
        aliyun_report("BIZ-batch", False, phone="13800000002"),
        aliyun_report("BIZ-batch", True, phone="8613800000001"),
    ]
    assert (await json_post(client, "aliyun-main", batch, ALIYUN_TOKEN)).status_code == 200
    assert row(db, first)[0] == "delivered"
    assert row(db, second)[0] == "failed"


async def test_aliyun_wrong_or_missing_token_is_refused(client: httpx.AsyncClient, db: Db) -> None:
    mid = new_id()
    seed(db, mid, provider="aliyun-main", pmid="BIZ-guarded")
    for token in ("wrong-token", None):
        response = await json_post(client, "aliyun-main", [aliyun_report("BIZ-guarded", True)], token)
        assert response.status_code == 403
    unconfigured = await json_post(client, "aliyun-no-token", [aliyun_report("BIZ-guarded", True)], "")
    assert unconfigured.status_code == 403 and unconfigured.json()["error"] == "not_configured"
    assert row(db, mid)[0] == "sent"
    assert (
        await metric(client, "reach_receipts_rejected_total", provider="aliyun-main", reason="bad_token") == 2
    )


async def test_aliyun_malformed_bodies_are_400s(client: httpx.AsyncClient) -> None:
    not_json = await client.post(f"/v1/receipts/aliyun-main?token={ALIYUN_TOKEN}", content=b"{nope")
    no_success = await json_post(client, "aliyun-main", [{"biz_id": "B1"}], ALIYUN_TOKEN)
    no_ids = await json_post(
        client, "aliyun-main", [{"success": True, "err_code": "DELIVERED"}], ALIYUN_TOKEN
    )
    assert not_json.status_code == no_success.status_code == no_ids.status_code == 400
    assert "item 0: 'success'" in no_success.json()["message"]
    assert "'biz_id' or 'out_id'" in no_ids.json()["message"]


def tencent_report(sid: str, ok: bool) -> dict[str, str]:
    return {
        "user_receive_time": "2026-11-28 10:00:05",
        "nationcode": "86",
        "mobile": "13800000000",
        "report_status": "SUCCESS" if ok else "FAIL",
        "errmsg": "DELIVRD" if ok else "MI:0013",
        "description": "用户短信送达成功" if ok else "用户短信送达失败",
        "sid": sid,
    }


async def test_tencent_report_batch_with_token_applies_each_item(client: httpx.AsyncClient, db: Db) -> None:
    ok, bad = new_id(), new_id()
    seed(db, ok, provider="tencent-main", pmid="2026:ok-serial", platform="web")
    seed(db, bad, provider="tencent-main", pmid="2026:bad-serial", platform="web")
    batch = [tencent_report("2026:ok-serial", True), tencent_report("2026:bad-serial", False)]
    response = await json_post(client, "tencent-main", batch, TENCENT_TOKEN)
    assert response.status_code == 200 and response.json() == {"result": 0, "errmsg": "OK"}
    assert row(db, ok)[0] == "delivered"
    assert row(db, bad)[:2] == ("failed", "MI:0013")
    assert (
        await metric(client, "reach_receipts_total", provider="tencent-main", platform="web", status="failed")
        == 1
    )


async def test_tencent_wrong_token_and_bad_items_are_refused(client: httpx.AsyncClient, db: Db) -> None:
    mid = new_id()
    seed(db, mid, provider="tencent-main", pmid="2026:guarded")
    wrong = await json_post(client, "tencent-main", [tencent_report("2026:guarded", True)], ALIYUN_TOKEN)
    assert wrong.status_code == 403
    bad_status = await json_post(
        client,
        "tencent-main",
        [{**tencent_report("2026:guarded", True), "report_status": "OK"}],
        TENCENT_TOKEN,
    )
    no_sid = await json_post(client, "tencent-main", [{"report_status": "SUCCESS"}], TENCENT_TOKEN)
    assert bad_status.status_code == no_sid.status_code == 400
    assert row(db, mid)[0] == "sent"


async def test_unmatched_receipt_is_acknowledged_then_applied_by_rematch(
    client: httpx.AsyncClient, db: Db, settings: Settings
) -> None:
    """The provider called back before the worker wrote the send result."""
    mid = new_id()
    early = await json_post(client, "tencent-main", [tencent_report("2026:early", True)], TENCENT_TOKEN)
    assert early.status_code == 200
    assert await metric(client, "reach_receipts_total", provider="tencent-main", status="unmatched") == 1
    seed(db, mid, provider="tencent-main", pmid="2026:early")
    pool = await create_pool(settings)
    try:
        done = await ReceiptStore(pool).rematch(int(time.time() * 1000), 3_600_000)
        again = await ReceiptStore(pool).rematch(int(time.time() * 1000), 3_600_000)
    finally:
        pool.close()
        await pool.wait_closed()
    assert [(provider, result.outcome.value) for provider, result in done] == [("tencent-main", "delivered")]
    assert again == []
    assert row(db, mid)[0] == "delivered"


async def test_the_api_rematch_loop_applies_and_counts_late_matches(
    client: httpx.AsyncClient, db: Db, settings: Settings
) -> None:
    mid = new_id()
    await json_post(client, "tencent-main", [tencent_report("2026:loop", False)], TENCENT_TOKEN)
    seed(db, mid, provider="tencent-main", pmid="2026:loop", platform="android")
    registry = CollectorRegistry()
    endpoints = load_endpoints(settings.channels_file, {"REACH_TEST_TWILIO_TOKEN": TWILIO_TOKEN})
    service = ReceiptService(dict(endpoints), ApiMetrics(registry), SystemClock())
    pool = await create_pool(settings)
    await service.open(pool, rematch_interval=0.05)
    try:
        deadline = time.monotonic() + 10
        while row(db, mid)[0] != "failed":
            assert time.monotonic() < deadline, "the rematch loop did not apply the receipt"
            await asyncio.sleep(0.05)
    finally:
        await service.close()
        pool.close()
        await pool.wait_closed()
    labels = {"channel": "sms", "provider": "tencent-main", "platform": "android", "status": "failed"}
    assert registry.get_sample_value("reach_receipts_total", labels) == 1


async def test_a_receipt_for_a_message_being_retried_waits_for_the_next_attempt(
    client: httpx.AsyncClient, db: Db, settings: Settings
) -> None:
    """The receiver reports attempt 2 before the worker wrote attempt 2's row: the latest row
    is still attempt 1's "retrying". The receipt must wait (unmatched), not be dropped as stale."""
    mid = new_id()
    seed(db, mid, provider="crm-hook", channel="hooks", status="retrying")
    response = await webhook_post(client, {"message_id": mid, "status": "delivered"})
    assert response.status_code == 200 and response.json()["unmatched"] == 1
    assert row(db, mid)[0] == "retrying"
    seed(db, mid, provider="crm-hook", channel="hooks", attempt=2)
    pool = await create_pool(settings)
    try:
        done = await ReceiptStore(pool).rematch(int(time.time() * 1000), 3_600_000)
    finally:
        pool.close()
        await pool.wait_closed()
    assert [(p, r.outcome.value) for p, r in done if r.receipt.message_id == mid] == [
        ("crm-hook", "delivered")
    ]
    assert row(db, mid, attempt=2)[0] == "delivered" and row(db, mid)[0] == "retrying"


@pytest.fixture
def own_db() -> Iterator[Settings]:
    """A database of this test's own: it empties tables and counts every task's deliveries."""
    run = unique_run_id()
    built = Settings(mysql_database=f"reach_{run}", topic_prefix=f"{run}.")
    asyncio.run(migrate(built))
    yield built
    Db(built).drop()


def young_receipts_table(db: Db) -> None:
    """Empty the receipts table, as in a new deployment. On a table holding not many more
    receipts than one callback reports, the optimizer scanned the whole primary key for the
    outcome update, and under REPEATABLE READ the scan locked every row it passed."""
    db.query("TRUNCATE TABLE receipts")


# Few callbacks, each reporting a large share of the table's receipts: the shape in which the
# optimizer scanned the table for the outcome update. Several tasks, so counters are locked too.
ROUNDS, MESSAGES, CALLBACKS, CALLBACK_SIZE = 10, 60, 4, 40
TASKS = (1, 2, 3)
MOVED = ("delivered", "failed")


def seed_task_messages(db: Db, mids: list[str]) -> None:
    """A sent crm-hook message per id, of each task in TASKS in turn (one statement)."""
    rows = [(mid, f"task:{TASKS[i % len(TASKS)]}") for i, mid in enumerate(mids)]
    marks = ",".join(["(%s, 1, 'u-1', %s, 'hooks', 'crm-hook', 'sent', 1, 1, 1)"] * len(rows))
    db.query(
        "INSERT INTO delivery_results (message_id, attempt, user_id, rule_id, channel, provider, status, "
        f"event_ts, attempted_at, completed_at) VALUES {marks}",
        [v for r in rows for v in r],
    )


def overlapping_callbacks(mids: list[str], rng: random.Random) -> list[list[Receipt]]:
    """CALLBACKS callbacks of CALLBACK_SIZE messages each, starting evenly apart, so every message
    is in two or three of them; each in an order of its own; one reports failed, the others
    delivered."""
    callbacks = []
    for k in range(CALLBACKS):
        start = k * len(mids) // CALLBACKS
        taken = [mids[(start + i) % len(mids)] for i in range(CALLBACK_SIZE)]
        rng.shuffle(taken)
        status = ReceiptStatus.FAILED if k == CALLBACKS - 1 else ReceiptStatus.DELIVERED
        callbacks.append([Receipt(status, f"word-{k}", message_id=mid) for mid in taken])
    return callbacks


async def test_concurrent_callbacks_over_overlapping_messages_move_each_once_without_deadlock(
    own_db: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callbacks over overlapping sets of task messages, in orders of their own, as several API
    processes take them: none deadlocks (retries are off here: each lock is taken in key order,
    and a statement locks only the rows it names, however small the optimizer believes the
    table), each message moves exactly once and counts once towards its task."""
    monkeypatch.setattr(receipts_model, "MAX_TRANSACTION_TRIES", 1)
    db, rng = Db(own_db), random.Random(1213)
    pool = await create_pool(own_db, maxsize=CALLBACKS)
    try:
        store = ReceiptStore(pool)
        for _ in range(ROUNDS):
            young_receipts_table(db)
            mids = [new_id() for _ in range(MESSAGES)]
            seed_task_messages(db, mids)
            calls = [store.record("crm-hook", receipts, 1) for receipts in overlapping_callbacks(mids, rng)]
            results = await asyncio.gather(*calls)
            moved = [r.receipt.message_id for rs in results for r in rs if r.outcome.value in MOVED]
            assert sorted(moved) == sorted(mids)
    finally:
        pool.close()
        await pool.wait_closed()
    delivered = db.query(
        "SELECT CAST(SUBSTRING(rule_id, 6) AS SIGNED), COUNT(*) FROM delivery_results "
        "WHERE status = 'delivered' GROUP BY rule_id"
    )
    counted = db.query("SELECT task_no, n FROM task_counts WHERE status = 'delivered'")
    assert sorted(counted) == sorted(delivered) and len(delivered) == len(TASKS)
    assert {status for (status,) in db.query("SELECT DISTINCT status FROM delivery_results")} <= set(MOVED)


class _Deadlocking:
    """A pool whose connections fail the first ``UPDATE delivery_results`` with a deadlock,
    as the database does when it picks this transaction as the victim."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.failed = pool, 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            yield _DeadlockingConnection(conn, self)


class _DeadlockingConnection:
    def __init__(self, conn: Any, owner: _Deadlocking) -> None:
        self.conn, self.owner = conn, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    @contextlib.asynccontextmanager
    async def cursor(self) -> AsyncIterator[Any]:
        async with self.conn.cursor() as cur:
            real = cur.execute

            async def execute(sql: str, args: Any = None) -> Any:
                if sql.startswith("UPDATE delivery_results") and not self.owner.failed:
                    self.owner.failed += 1
                    raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
                return await real(sql, args)

            cur.execute = execute
            yield cur


async def test_a_transaction_rolled_back_for_a_deadlock_is_run_again(db: Db, settings: Settings) -> None:
    mid = new_id()
    seed(db, mid, provider="crm-hook", channel="hooks")
    pool = await create_pool(settings)
    try:
        flaky = _Deadlocking(pool)
        receipt = Receipt(ReceiptStatus.FAILED, "failed", message_id=mid, error_code="bounced")
        [result] = await ReceiptStore(flaky).record("crm-hook", [receipt], 1)
    finally:
        pool.close()
        await pool.wait_closed()
    assert flaky.failed == 1 and result.outcome.value == "failed"
    assert row(db, mid)[:2] == ("failed", "bounced")
    assert db.query("SELECT outcome FROM receipts WHERE message_id = %s", [mid]) == [("applied",)]


# --- the generic signed webhook callback ------------------------------------------------------


async def test_signed_webhook_callback_applies_a_list(client: httpx.AsyncClient, db: Db) -> None:
    ok, bad = new_id(), new_id()
    seed(db, ok, provider="crm-hook", channel="hooks", pmid="receiver-id-1")
    seed(db, bad, provider="crm-hook", channel="hooks")
    body = [
        {"message_id": ok, "status": "delivered", "ts": 1_800_000_100_000},
        {
            "message_id": bad,
            "status": "failed",
            "error_code": "mailbox_full",
            "ts": "2027-01-15T08:00:00+08:00",
        },
        {"message_id": ok, "status": "delivered", "ts": 1_800_000_100_000},
    ]
    response = await webhook_post(client, body)
    assert response.status_code == 200
    assert response.json() == {
        "received": 3,
        "delivered": 1,
        "failed": 1,
        "stale": 0,
        "unmatched": 0,
        "progress": 0,
        "duplicate": 1,
    }
    assert row(db, ok) == ("delivered", "", 1_800_000_100_000)
    assert row(db, bad)[:2] == ("failed", "mailbox_full")


async def test_webhook_bad_signature_or_stale_timestamp_is_refused(client: httpx.AsyncClient, db: Db) -> None:
    mid = new_id()
    seed(db, mid, provider="crm-hook", channel="hooks")
    body = {"message_id": mid, "status": "delivered"}
    forged = await webhook_post(client, body, secret="guess")
    stale = await webhook_post(client, body, at=int(time.time()) - 3600)
    assert forged.status_code == stale.status_code == 403
    assert row(db, mid)[0] == "sent"
    malformed = await webhook_post(client, {"message_id": mid, "status": "read"})
    assert malformed.status_code == 400 and "'delivered' or 'failed'" in malformed.json()["message"]


async def test_an_oversized_body_is_refused_without_reading_it_all(client: httpx.AsyncClient) -> None:
    chunk, chunks = b"[" + b" " * (64 * 1024 - 1), 64  # 4 MiB, four times the limit
    read = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(chunks):
            read += 1
            yield chunk

    streamed = await client.post(f"/v1/receipts/tencent-main?token={TENCENT_TOKEN}", content=body())
    assert streamed.status_code == 413 and streamed.json()["error"] == "too_large"
    assert read <= 17  # stopped just past 1 MiB
    read = 0
    declared = await client.post(
        f"/v1/receipts/tencent-main?token={TENCENT_TOKEN}",
        content=body(),
        headers={"content-length": str(len(chunk) * chunks)},
    )
    assert declared.status_code == 413 and read <= 1  # refused on its Content-Length
    rejected = await metric(
        client, "reach_receipts_rejected_total", provider="tencent-main", reason="too_large"
    )
    assert rejected == 2


async def test_unknown_provider_name_is_a_404(client: httpx.AsyncClient) -> None:
    for name in ("nobody", "smtp-local"):  # not in the file; in it but of a type without receipts
        response = await client.post(f"/v1/receipts/{name}", content=b"[]")
        assert response.status_code == 404
        assert response.json()["error"] == "unknown_provider"


# --- GET /v1/stats/delivery -------------------------------------------------------------------

T0 = 1_900_000_000_000  # 2030-03-17T17:46:40Z
HOUR = 3_600_000


async def test_stats_count_the_latest_attempt_per_group_within_the_range(
    client: httpx.AsyncClient, db: Db
) -> None:
    channel = f"st{uuid.uuid4().hex[:8]}"

    def put(
        status: str, *, provider: str = "twilio-main", platform: str = "ios", at: int = T0 + 10, **kw: Any
    ) -> str:
        mid = kw.pop("mid", None) or new_id()
        seed(
            db,
            mid,
            status=status,
            provider=provider,
            channel=channel,
            platform=platform,
            completed_at=at,
            **kw,
        )
        return mid

    for status in ("delivered", "failed", "sent", "unknown", "retrying"):
        put(status)
    retried = put("retrying")  # then delivered on the second attempt: counts once, delivered
    put("delivered", mid=retried, attempt=2, at=T0 + 20)
    late = put("retrying", at=T0 + 30)  # its latest attempt completed after the range: not counted
    put("sent", mid=late, attempt=2, at=T0 + HOUR + 5)
    put("delivered", platform="android")
    put("failed", provider="aliyun-main")
    put("sent", provider="aliyun-main")
    put("delivered", at=T0 - 1)  # before the range
    put("delivered", at=T0 + HOUR)  # the end is exclusive

    response = await client.get(
        "/v1/stats/delivery", params={"from": T0, "to": T0 + HOUR, "channel": channel}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["from_ms"], body["to_ms"]) == (T0, T0 + HOUR)
    groups = {(g["provider"], g["platform"]): g for g in body["groups"]}
    assert [g["channel"] for g in body["groups"]] == [channel] * 3
    assert list(groups) == [("aliyun-main", "ios"), ("twilio-main", "android"), ("twilio-main", "ios")]
    ios = groups[("twilio-main", "ios")]
    assert {k: ios[k] for k in ("messages", "sent", "delivered", "failed", "unknown", "pending")} == {
        "messages": 6,
        "sent": 1,
        "delivered": 2,
        "failed": 1,
        "unknown": 1,
        "pending": 1,
    }
    assert ios["success_rate"] == pytest.approx(2 / 3) and ios["accepted_rate"] == pytest.approx(0.5)
    android = groups[("twilio-main", "android")]
    assert (android["messages"], android["success_rate"], android["accepted_rate"]) == (1, 1.0, 1.0)
    aliyun = groups[("aliyun-main", "ios")]
    assert (aliyun["messages"], aliyun["success_rate"], aliyun["accepted_rate"]) == (2, 0.0, 0.5)
    total = body["total"]
    assert (total["messages"], total["delivered"], total["failed"]) == (9, 3, 2)
    assert total["success_rate"] == pytest.approx(0.6) and total["accepted_rate"] == pytest.approx(5 / 9)

    iso = dt.datetime.fromtimestamp(T0 / 1000, dt.UTC).isoformat()  # "+00:00" sent encoded
    only_aliyun = await client.get(
        "/v1/stats/delivery",
        params={"from": iso, "to": T0 + HOUR, "channel": channel, "provider": "aliyun-main"},
    )
    assert [(g["provider"], g["messages"]) for g in only_aliyun.json()["groups"]] == [("aliyun-main", 2)]
    raw_plus = await client.get(
        f"/v1/stats/delivery?from={iso}&to={T0 + HOUR}&channel={channel}"
    )  # "+" as " "
    assert raw_plus.status_code == 200 and raw_plus.json()["total"]["messages"] == 9


async def test_stats_default_to_the_last_24_hours(client: httpx.AsyncClient, db: Db) -> None:
    channel = f"st{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    seed(db, new_id(), channel=channel, status="delivered", completed_at=now - HOUR)
    seed(db, new_id(), channel=channel, status="delivered", completed_at=now - 25 * HOUR)
    body = (await client.get("/v1/stats/delivery", params={"channel": channel})).json()
    assert body["to_ms"] - body["from_ms"] == 24 * HOUR
    assert body["total"]["messages"] == 1


async def test_stats_with_nothing_in_range_have_null_rates(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/stats/delivery", params={"channel": "no-such-channel"})).json()
    assert body["groups"] == []
    assert (body["total"]["messages"], body["total"]["success_rate"], body["total"]["accepted_rate"]) == (
        0,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"from": T0, "to": T0}, "bad_range"),
        ({"from": T0 + 1, "to": T0}, "bad_range"),
        ({"from": T0, "to": T0 + 32 * 24 * HOUR}, "bad_range"),
        ({"from": "yesterday"}, "bad_time"),
        ({"from": "1700000000"}, "bad_time"),  # seconds, not milliseconds
        ({"from": "2030-03-17T10:00:00"}, "bad_time"),  # no offset
        ({"from": "\u00b2"}, "bad_time"),  # a digit to str.isdigit(), not to int()
        ({"from": "1" * 5000}, "bad_time"),  # beyond int()'s digit limit
    ],
)
async def test_stats_reject_a_bad_range_with_a_json_error(
    client: httpx.AsyncClient, params: dict[str, Any], code: str
) -> None:
    response = await client.get("/v1/stats/delivery", params=params)
    assert response.status_code == 400
    assert response.json()["error"] == code and response.json()["message"]


# --- schema upgrade ---------------------------------------------------------------------------


async def test_migrate_adds_the_receipt_column_and_index_to_an_existing_table() -> None:
    settings = Settings(mysql_database=f"reach_{unique_run_id()}")
    db = Db(settings)
    await migrate(settings)
    try:
        db.query("ALTER TABLE delivery_results DROP INDEX idx_results_provider_msg, DROP COLUMN receipt_at")
        await migrate(settings)
        await migrate(settings)  # idempotent
        columns = db.query("SHOW COLUMNS FROM delivery_results LIKE 'receipt_at'")
        indexes = db.query("SHOW INDEX FROM delivery_results WHERE Key_name = 'idx_results_provider_msg'")
        assert len(columns) == 1 and len(indexes) == 1
    finally:
        db.drop()


# --- the real ``reach api`` process -----------------------------------------------------------


def test_api_process_applies_receipts_and_serves_stats(pipeline: Pipeline, api: Api) -> None:
    """The ``reach api`` subprocess reads the pipeline's channels file (its ``receipts``
    channel, and a ${VAR} it is not given) and works on the pipeline's database."""
    channel = f"st{uuid.uuid4().hex[:8]}"
    by_twilio, by_aliyun, sid = new_id(), new_id(), f"SM{uuid.uuid4().hex}"
    seed(pipeline.db, by_twilio, channel=channel, provider="twilio-receipts", pmid=sid, completed_at=T0 + 1)
    seed(
        pipeline.db,
        by_aliyun,
        channel=channel,
        provider="aliyun-receipts",
        pmid="BIZ-e2e",
        completed_at=T0 + 2,
    )

    url = f"{api.base_url}/v1/receipts/twilio-receipts"
    params = twilio_status(sid, "delivered")
    signed = url + "".join(name + params[name] for name in sorted(params))
    mac = hmac.new(RECEIPT_TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()
    twilio = httpx.post(
        url, data=params, headers={"x-twilio-signature": base64.b64encode(mac).decode()}, timeout=10
    )
    assert twilio.status_code == 200
    report = orjson.dumps([aliyun_report("BIZ-e2e", False)])
    aliyun_url = f"{api.base_url}/v1/receipts/aliyun-receipts"
    assert httpx.post(aliyun_url, params={"token": "guess"}, content=report, timeout=10).status_code == 403
    assert (
        httpx.post(aliyun_url, params={"token": RECEIPT_TOKEN}, content=report, timeout=10).status_code == 200
    )
    assert row(pipeline.db, by_twilio)[0] == "delivered"
    assert row(pipeline.db, by_aliyun)[0] == "failed"

    stats = httpx.get(
        f"{api.base_url}/v1/stats/delivery",
        params={"from": T0, "to": T0 + HOUR, "channel": channel},
        headers=api.headers,
        timeout=10,
    )
    assert stats.status_code == 200
    assert stats.json()["total"]["success_rate"] == 0.5
    unknown = httpx.post(f"{api.base_url}/v1/receipts/twilio-main", content=b"", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_provider"
