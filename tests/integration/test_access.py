"""Access control of the HTTP API: every scope against every endpoint, user tokens good and
bad, revoked keys, rate limits, event allow-lists and the JSON-only rule.

The app runs in-process (``httpx.ASGITransport``) on the real MariaDB, Kafka and Redis, with
a manual clock, so key-cache expiry and rate-limit windows are crossed by advancing it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio

from api.app import create_app
from models import audit
from models.access import KeyStore
from models.storage import create_pool, migrate
from reach.clock import ManualClock
from reach.settings import Settings
from tests.integration.harness import Db, bearer, clear_redis, make_settings, new_key, unique_run_id
from tests.support.tokens import HS256_SECRET, SigningKeys, signing_keys, token, unsigned

# One app for the module (starting one costs a Kafka producer and a pool): its loop too.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
BASE = "http://reach.test"
SCOPES = ("events:write", "inbox:read", "tasks:write", "stats:read", "admin")
CACHE_S = 5


@pytest.fixture(scope="module")
def jwks(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    return signing_keys(tmp_path_factory.mktemp("jwks"))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, jwks: SigningKeys) -> Iterator[Settings]:
    tmp = tmp_path_factory.mktemp("access")
    built = make_settings(
        tmp,
        unique_run_id(),
        "channels: {}\n",
        jwt_hs256_secret=HS256_SECRET,
        jwt_jwks_file=jwks.jwks_file,
        api_key_cache_seconds=CACHE_S,
        rate_limit_per_user=5,
    )
    asyncio.run(migrate(built))
    yield built
    Db(built).drop()
    clear_redis(built)


@dataclasses.dataclass
class Running:
    http: httpx.AsyncClient
    clock: ManualClock
    settings: Settings


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running(settings: Settings) -> AsyncIterator[Running]:
    async for running in start(settings):
        yield running


async def start(settings: Settings) -> AsyncIterator[Running]:
    clock = ManualClock(int(time.time() * 1000))
    app = create_app(settings, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url=BASE) as http,
    ):
        yield Running(http, clock, settings)


async def key_for(r: Running, *scopes: str, **spec: Any) -> str:
    """A new key, and the clock moved past the cache time so the app reads it."""
    made = await new_key(r.settings, *scopes, **spec)
    r.clock.advance(CACHE_S * 1000)
    return made


def event(name: str = "test_access", user_id: str = "u-1") -> dict[str, Any]:
    return {"event_id": f"e-{time.time_ns()}", "user_id": user_id, "name": name, "ts": 1764291600000}


def call(r: Running, endpoint: str, headers: dict[str, str]) -> Any:
    method, path = endpoint.split(" ", 1)
    if path == "/v1/events":
        body = orjson.dumps(event())
        return r.http.post(path, content=body, headers={**headers, "content-type": "application/json"})
    return r.http.request(method, path, headers=headers)


# endpoint -> what lets a caller in: a scope, or "user" (inbox:read, or the user's own token)
ENDPOINTS = {
    "POST /v1/events": "events:write",
    "GET /v1/users/u-1/inbox": "user",
    "POST /v1/users/u-1/inbox/m-1/read": "user",
    "GET /v1/users/u-1/popups": "user",
    "POST /v1/users/u-1/popups/m-1/dismiss": "user",
    "GET /v1/stats/delivery": "stats:read",
}


def key_may(scope: str, needs: str) -> bool:
    return scope == "admin" or scope == needs or (needs == "user" and scope == "inbox:read")


async def test_each_scope_and_user_token_against_each_endpoint(running: Running, jwks: SigningKeys) -> None:
    keys = {scope: bearer(await key_for(running, scope)) for scope in SCOPES}
    users = {
        "u-1 HS256": bearer(token("u-1")),
        "u-1 RS256": bearer(token("u-1", jwks.rsa, "RS256", "rsa-1")),
        "u-1 ES256": bearer(token("u-1", jwks.ec, "ES256", "ec-1")),
    }
    seen = []
    for endpoint, needs in ENDPOINTS.items():
        for scope, headers in keys.items():
            status = (await call(running, endpoint, headers)).status_code
            allowed = key_may(scope, needs)
            assert (status not in (401, 403)) == allowed, (endpoint, scope, status)
            assert allowed or status == 403
            seen.append(status)
        for name, headers in users.items():
            status = (await call(running, endpoint, headers)).status_code
            assert (status not in (401, 403)) == (needs == "user"), (endpoint, name, status)
        other_user = await call(running, endpoint, bearer(token("u-2")))
        assert other_user.status_code == 403 and other_user.json()["error"] == "forbidden", endpoint
    assert {202, 200, 404} <= set(seen)  # the allowed calls did their work (404: no such message)


@pytest.mark.parametrize(
    "credential",
    ["missing", "expired", "forged", "alg_none", "unknown_kid", "garbage", "made_up_key", "wrong_secret"],
)
async def test_bad_credentials_are_401_on_every_endpoint(
    running: Running, jwks: SigningKeys, credential: str
) -> None:
    real = await key_for(running, "admin")
    headers = {
        "missing": {},
        "expired": bearer(token("u-1", exp=int(time.time()) - 3600)),
        "forged": bearer(token("u-1", "not-the-secret-but-long-enough-to-sign")),
        "alg_none": bearer(unsigned("u-1")),
        "unknown_kid": bearer(token("u-1", jwks.rsa, "RS256", "rsa-unknown")),
        "garbage": bearer("garbage"),
        "made_up_key": bearer("rk_0123456789abcdef_" + "x" * 43),
        "wrong_secret": bearer(real[:-4] + "AAAA"),
    }[credential]
    for endpoint in ENDPOINTS:
        response = await call(running, endpoint, headers)
        assert response.status_code == 401, (endpoint, response.text)
        assert response.json()["error"] == "unauthenticated"
        assert response.headers["www-authenticate"] == "Bearer"


async def test_a_revoked_key_stops_working_within_the_cache_time(running: Running) -> None:
    key = await key_for(running, "inbox:read")
    path = "/v1/users/u-1/inbox"
    assert (await running.http.get(path, headers=bearer(key))).status_code == 200
    pool = await create_pool(running.settings, maxsize=1)
    try:
        store = KeyStore(pool)
        key_id = key.split("_")[1]
        await store.revoke(key_id, "tests", running.clock.now_ms())
        # Within the cache time the snapshot may still hold it; past it, never.
        running.clock.advance(CACHE_S * 1000)
        refused = await running.http.get(path, headers=bearer(key))
        assert refused.status_code == 401
        actions = [(e.action, e.target) for e in await audit.recent(pool, 500)]
    finally:
        pool.close()
        await pool.wait_closed()
    assert ("key.create", key_id) in actions and ("key.revoke", key_id) in actions


async def test_a_rotated_key_takes_the_new_secret_and_the_old_one_for_the_grace_period(
    running: Running,
) -> None:
    old = await key_for(running, "stats:read")
    key_id = old.split("_")[1]
    pool = await create_pool(running.settings, maxsize=1)
    try:
        new = await KeyStore(pool).rotate(key_id, 60_000, "tests", running.clock.now_ms())
    finally:
        pool.close()
        await pool.wait_closed()
    running.clock.advance(CACHE_S * 1000)
    for credential in (old, new):
        assert (await running.http.get("/v1/stats/delivery", headers=bearer(credential))).status_code == 200
    running.clock.advance(60_000)
    assert (await running.http.get("/v1/stats/delivery", headers=bearer(old))).status_code == 401
    assert (await running.http.get("/v1/stats/delivery", headers=bearer(new))).status_code == 200


async def test_a_key_over_its_rate_limit_gets_429_and_other_keys_do_not(running: Running) -> None:
    window_ms = running.settings.rate_window_seconds * 1000
    running.clock.advance(window_ms - running.clock.now_ms() % window_ms)  # a window's start
    limited = bearer(await key_for(running, "stats:read", rate_limit=3))
    other = bearer(await key_for(running, "stats:read"))
    statuses = [(await running.http.get("/v1/stats/delivery", headers=limited)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    over = await running.http.get("/v1/stats/delivery", headers=limited)
    assert over.json()["error"] == "rate_limited"
    assert over.headers["retry-after"] == str(running.settings.rate_window_seconds)
    assert (await running.http.get("/v1/stats/delivery", headers=other)).status_code == 200
    running.clock.advance(window_ms)
    assert (await running.http.get("/v1/stats/delivery", headers=limited)).status_code == 200


async def test_an_end_user_over_the_user_rate_limit_gets_429(running: Running) -> None:
    limit = running.settings.rate_limit_per_user
    user = f"rl-{time.time_ns()}"
    own = bearer(token(user))
    statuses = [
        (await running.http.get(f"/v1/users/{user}/inbox", headers=own)).status_code for _ in range(limit + 1)
    ]
    assert statuses == [200] * limit + [429]
    other = bearer(token(f"{user}-other"))
    assert (await running.http.get(f"/v1/users/{user}-other/inbox", headers=other)).status_code == 200


async def test_a_key_emits_only_its_event_names(running: Running) -> None:
    marketing = bearer(await key_for(running, "events:write", events=frozenset({"promo_viewed"})))
    json_headers = {**marketing, "content-type": "application/json"}
    ok = await running.http.post(
        "/v1/events", content=orjson.dumps(event("promo_viewed")), headers=json_headers
    )
    assert ok.status_code == 202
    batch = [event("promo_viewed"), event("password_reset_requested")]
    refused = await running.http.post("/v1/events", content=orjson.dumps(batch), headers=json_headers)
    assert refused.status_code == 403 and refused.json()["error"] == "event_not_allowed"
    assert refused.json()["details"] == [{"index": 1, "name": "password_reset_requested"}]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
async def test_events_must_be_sent_as_json(running: Running, content_type: str | None) -> None:
    headers = bearer(await key_for(running, "events:write"))
    if content_type:
        headers["content-type"] = content_type
    response = await running.http.post("/v1/events", content=orjson.dumps(event()), headers=headers)
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"
    charset = {**headers, "content-type": "application/json; charset=utf-8"}
    assert (
        await running.http.post("/v1/events", content=orjson.dumps(event()), headers=charset)
    ).status_code == 202


async def test_duplicate_keys_and_control_characters_are_refused(running: Running) -> None:
    headers = {**bearer(await key_for(running, "admin")), "content-type": "application/json"}
    doubled = b'{"event_id":"e","user_id":"u-1","user_id":"victim","name":"n","ts":1764291600000}'
    response = await running.http.post("/v1/events", content=doubled, headers=headers)
    assert response.status_code == 400 and response.json()["error"] == "duplicate_key"
    bidi = await running.http.post(
        "/v1/events", content=orjson.dumps(event(user_id="u\u202e1")), headers=headers
    )
    assert bidi.status_code == 422 and bidi.json()["details"][0]["reason"] == "bad_user_id"
    for path in ("/v1/users/u%00/inbox", "/v1/users/u%E2%80%AE1/popups"):
        assert (await running.http.get(path, headers=headers)).status_code == 422, path


async def test_cors_is_off_unless_origins_are_configured(running: Running, settings: Settings) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    response = await running.http.options("/v1/events", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    allowed = settings.model_copy(update={"cors_origins": ("https://app.example",)})
    async for other in start(allowed):
        answer = await other.http.options("/v1/events", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        stranger = await other.http.options(
            "/v1/events", headers={**preflight, "origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in stranger.headers


async def test_open_endpoints_need_no_credential(running: Running) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"):
        assert (await running.http.get(path)).status_code == 200, path


async def test_the_docs_page_loads_nothing_from_another_host(running: Running) -> None:
    page = (await running.http.get("/docs")).text
    assert "cdn." not in page and "https://" not in page
    scripts = [part.split('"')[0] for part in page.split('src="')[1:]]
    assert scripts and all(src.startswith("/static-offline-docs/") for src in scripts)
    for src in scripts:
        served = await running.http.get(src)
        assert served.status_code == 200 and len(served.content) > 100_000  # the Swagger UI bundle
