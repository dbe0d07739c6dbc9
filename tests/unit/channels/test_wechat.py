"""WeChat template messages against the local WeChat stand-in, with the token in the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.wechat import SharedToken, WechatTemplateProvider, cache_ttl, until_quota_reset
from tests.support.http_provider import Fault
from tests.support.providers.wechat import WechatServer
from tests.support.sockets import closed_port
from tests.unit.channels.factories import delivery

REDIS_URL = "redis://127.0.0.1:6379/0"
OPENID = "o-abc"
NOW = 1_700_000_000  # 2023-11-14 22:13:20 UTC = 06:13:20 in Beijing


def wechat(n: int = 1, openid: str | None = OPENID, **overrides: Any) -> Delivery:
    contact = {"wechat_openid": openid} if openid else {}
    fields: dict[str, Any] = {"channel": "wechat", "template": "welcome_wechat", "contact": contact}
    return delivery(n, **{**fields, **overrides})


@pytest.fixture
def server() -> Iterator[WechatServer]:
    running = WechatServer()
    with running:
        yield running


@pytest.fixture
async def redis() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except RedisConnectionError:
        await client.aclose()
        pytest.fail(f"Redis is not running at {REDIS_URL}: start it with `bash deploy/stack.sh up`")
    prefix = f"reach-test-{uuid.uuid4().hex}:"
    yield client, prefix
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def make_provider(
    server: WechatServer, redis: tuple[aioredis.Redis, str], name: str = "wechat-1", **options: Any
) -> WechatTemplateProvider:
    client, prefix = redis
    merged = {**server.provider_options(), "redis_prefix": prefix, "timeout": 1, **options}
    provider = WechatTemplateProvider(
        ProviderConfig(name, "wechat_template", options=merged), ProviderContext(redis=client)
    )
    await provider.setup()
    provider.clock = lambda: NOW
    return provider


@pytest.fixture
async def provider(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> AsyncIterator[WechatTemplateProvider]:
    running = await make_provider(server, redis)
    yield running
    await running.close()


async def send(provider: WechatTemplateProvider, *deliveries: Delivery) -> list[Outcome]:
    return await provider.send_batch(list(deliveries or [wechat()]))


# --- success and the shared token ---------------------------------------------------------------


async def test_sends_a_template_message_with_a_cached_token(
    provider: WechatTemplateProvider, server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    [outcome] = await send(provider, wechat(1, title="Hi", text="Welcome aboard"))
    assert (outcome.kind, outcome.provider_message_id) == (OutcomeKind.SENT, "1001")
    [body] = server.delivered.items()
    assert body == {
        "touser": OPENID,
        "template_id": "tmpl-welcome",
        "data": {"first": {"value": "Hi"}, "keyword1": {"value": "Welcome aboard"}},
    }
    client, prefix = redis
    key = f"{prefix}wechat:token:wx-test-app"
    assert await client.get(key) == b"token-1"
    assert 6800 < await client.ttl(key) <= 6900  # expires_in 7200 minus the 5-minute margin
    await send(provider, wechat(2))
    assert server.token_fetches == 1


async def test_two_workers_sharing_redis_fetch_the_token_once(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    first = await make_provider(server, redis, "wechat-a")
    second = await make_provider(server, redis, "wechat-b")
    try:
        outcomes = await asyncio.gather(
            first.send_batch([wechat(n) for n in range(1, 6)]),
            second.send_batch([wechat(n) for n in range(6, 11)]),
        )
    finally:
        await first.close()
        await second.close()
    assert [o.kind for batch in outcomes for o in batch] == [OutcomeKind.SENT] * 10
    assert server.token_fetches == 1
    assert len(server.delivered) == 10


@pytest.mark.parametrize("code", [40001, 42001])
async def test_a_refused_token_is_refreshed_once_and_the_send_succeeds(
    provider: WechatTemplateProvider, server: WechatServer, redis: tuple[aioredis.Redis, str], code: int
) -> None:
    await send(provider, wechat(1))
    server.expire_tokens(code)
    outcomes = await send(provider, wechat(2), wechat(3), wechat(4))
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 3
    assert server.token_fetches == 2
    client, prefix = redis
    assert await client.get(f"{prefix}wechat:token:wx-test-app") == b"token-2"


async def test_a_token_refused_twice_is_a_retry_not_a_loop(
    provider: WechatTemplateProvider, server: WechatServer
) -> None:
    await send(provider, wechat(1))
    server.fail_next_sends(40001, 40001)
    [outcome] = await send(provider, wechat(2))
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "40001")
    assert server.token_fetches == 2


async def test_discard_keeps_a_newer_token_from_another_worker(redis: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis
    shared = SharedToken(client, f"{prefix}wechat:token:x", f"{prefix}wechat:token-lock:x", wait=1)
    await client.set(shared.key, "token-new")
    assert not await shared.discard("token-old")
    assert await shared.cached() == "token-new"
    assert await shared.discard("token-new")
    assert await shared.cached() is None


async def test_a_worker_waits_for_the_one_holding_the_lock(redis: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis
    shared = SharedToken(client, f"{prefix}wechat:token:x", f"{prefix}wechat:token-lock:x", wait=2)
    await client.set(shared.lock_key, "other-worker", px=5000)

    async def other_worker_stores_a_token() -> None:
        await asyncio.sleep(0.2)
        await client.set(shared.key, "token-from-b")

    async def must_not_fetch() -> tuple[str, int]:
        raise AssertionError("fetched while another worker held the lock")

    storing = asyncio.create_task(other_worker_stores_a_token())
    assert await shared.get(must_not_fetch) == "token-from-b"
    await storing


async def test_a_lock_never_released_is_a_short_retry(redis: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis
    shared = SharedToken(client, f"{prefix}wechat:token:x", f"{prefix}wechat:token-lock:x", wait=0.3)
    await client.set(shared.lock_key, "stuck-worker", px=5000)
    outcome = await shared.get(lambda: asyncio.sleep(0, ("never", 7200)))
    assert isinstance(outcome, Outcome)
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "token_busy")


def test_cache_ttl_keeps_a_margin() -> None:
    assert cache_ttl(7200) == 6900
    assert cache_ttl(60) == 30
    assert cache_ttl(1) == 1


# --- WeChat's answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (43101, OutcomeKind.PERMANENT),
        (43004, OutcomeKind.INVALID_ADDRESS),
        (40003, OutcomeKind.INVALID_ADDRESS),
        (45009, OutcomeKind.RETRY),
        (-1, OutcomeKind.RETRY),
        (47003, OutcomeKind.PERMANENT),
        (40037, OutcomeKind.PERMANENT),
        (48001, OutcomeKind.PERMANENT),
    ],
)
async def test_errcodes_are_classified(
    provider: WechatTemplateProvider, server: WechatServer, code: int, kind: OutcomeKind
) -> None:
    server.fail_openid(OPENID, code)
    [outcome] = await send(provider)
    assert (outcome.kind, outcome.code) == (kind, str(code))
    if code == 45009:
        assert outcome.retry_after == 64060  # 17:46:40 to midnight in Beijing, plus a minute


async def test_not_following_stops_only_that_user(
    provider: WechatTemplateProvider, server: WechatServer
) -> None:
    server.fail_openid("o-gone", 43004)
    gone, fine = await send(provider, wechat(1, openid="o-gone"), wechat(2))
    assert (gone.kind, gone.code) == (OutcomeKind.INVALID_ADDRESS, "43004")
    assert "does not follow" in gone.detail
    assert fine.kind is OutcomeKind.SENT


async def test_a_refused_template_does_not_bury_the_openid(
    provider: WechatTemplateProvider, server: WechatServer
) -> None:
    # 43101: the user refused this template's messages (拒收), which WeChat applies per template;
    # an INVALID_ADDRESS would record the openid dead and stop every other template too.
    server.fail_openid("o-refuses", 43101)
    [refused] = await send(provider, wechat(1, openid="o-refuses"))
    assert (refused.kind, refused.code) == (OutcomeKind.PERMANENT, "43101")
    assert "refused this template" in refused.detail


async def test_unknown_template_id_is_permanent(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    provider = await make_provider(server, redis, template_id="tmpl-deleted")
    try:
        [outcome] = await send(provider)
    finally:
        await provider.close()
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "40037")


async def test_per_template_mapping_with_variables_and_a_quoted_url(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    templates = {
        "order_shipped": {
            "template_id": "tmpl-order",
            "data": {"keyword1": "{order_id}", "keyword2": "{title}"},
            "url": "https://shop.example/orders/{order_id}",
        }
    }
    provider = await make_provider(server, redis, templates=templates)
    try:
        shipped = wechat(1, template="order_shipped", variables={"order_id": "A 7/1"}, title="Shipped")
        outcomes = await send(provider, shipped, wechat(2))
    finally:
        await provider.close()
    assert [o.kind for o in outcomes] == [OutcomeKind.SENT] * 2
    order, welcome = server.delivered.items()
    assert order["template_id"] == "tmpl-order"
    assert order["data"] == {"keyword1": {"value": "A 7/1"}, "keyword2": {"value": "Shipped"}}
    assert order["url"] == "https://shop.example/orders/A%207%2F1"
    assert welcome["template_id"] == "tmpl-welcome"


async def test_messages_that_cannot_be_built_send_nothing(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    provider = await make_provider(server, redis, data={"keyword1": "{coupon}"})
    try:
        no_address, no_variable = await send(provider, wechat(1, openid=None), wechat(2))
    finally:
        await provider.close()
    assert (no_address.kind, no_address.code) == (OutcomeKind.PERMANENT, "no_address")
    assert (no_variable.kind, no_variable.code) == (OutcomeKind.PERMANENT, "missing_variable")
    assert "'coupon'" in no_variable.detail
    assert server.requests == []


# --- credentials, secrets and faults ------------------------------------------------------------


async def test_a_wrong_app_secret_is_an_auth_retry_without_the_secret(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    provider = await make_provider(server, redis, app_secret="not-the-secret")
    try:
        outcomes = await send(provider, wechat(1), wechat(2), wechat(3))
    finally:
        await provider.close()
    assert {(o.kind, o.code, o.retry_after) for o in outcomes} == {(OutcomeKind.RETRY, "auth", 300.0)}
    assert "40125" in outcomes[0].detail
    assert all("not-the-secret" not in o.detail for o in outcomes)
    assert len(server.requests) == 1  # one refused fetch, shared by the whole batch
    assert server.delivered.items() == []


async def test_a_token_fetch_timeout_is_a_retry_not_unknown(
    provider: WechatTemplateProvider, server: WechatServer
) -> None:
    server.inject(Fault.timeout(2))
    [outcome] = await send(provider)
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "token")
    assert "wechat-app-secret" not in outcome.detail


@pytest.mark.parametrize(
    ("fault", "kind", "code"),
    [
        (Fault.timeout(2), OutcomeKind.UNKNOWN, "timeout"),
        (Fault.reset(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.drop_after_accept(), OutcomeKind.UNKNOWN, "disconnected"),
        (Fault.status(429, headers={"Retry-After": "7"}), OutcomeKind.RETRY, "429"),
        (Fault.status(503), OutcomeKind.RETRY, "503"),
    ],
)
async def test_send_faults_are_classified(
    provider: WechatTemplateProvider, server: WechatServer, fault: Fault, kind: OutcomeKind, code: str
) -> None:
    await send(provider, wechat(1))  # the token is cached: the fault hits the send
    server.inject(fault)
    [outcome] = await send(provider, wechat(2))
    assert (outcome.kind, outcome.code) == (kind, code)
    assert "token-1" not in outcome.detail
    if code == "429":
        assert outcome.retry_after == 7
    [after] = await send(provider, wechat(3))
    assert after.kind is OutcomeKind.SENT


async def test_a_burst_of_5xx_retries_then_recovers(
    provider: WechatTemplateProvider, server: WechatServer
) -> None:
    await send(provider, wechat(1))
    server.inject(Fault.burst(502, 3))
    outcomes = [(await send(provider, wechat(n)))[0] for n in range(2, 6)]
    assert [o.kind for o in outcomes] == [OutcomeKind.RETRY] * 3 + [OutcomeKind.SENT]


async def test_redis_down_is_a_retry(server: WechatServer) -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0")
    config = ProviderConfig(
        "wechat-1", "wechat_template", options={**server.provider_options(), "timeout": 1}
    )
    provider = WechatTemplateProvider(config, ProviderContext(redis=client))
    await provider.setup()
    try:
        [outcome] = await send(provider)
    finally:
        await provider.close()
        await client.aclose()
    assert (outcome.kind, outcome.code) == (OutcomeKind.RETRY, "redis")


# --- options ------------------------------------------------------------------------------------


async def test_redis_is_required(server: WechatServer) -> None:
    config = ProviderConfig("wechat-1", "wechat_template", options=server.provider_options())
    with pytest.raises(ValueError, match="needs Redis"):
        await WechatTemplateProvider(config, ProviderContext()).setup()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"template_id": None}, "option 'template_id' is required"),
        ({"data": None}, "option 'data' is required"),
        ({"data": {"first": "{title.__class__}"}}, "option 'data.first' may only use plain"),
        ({"data": {"first": "{0}"}}, "option 'data.first' may only use plain"),
        ({"data": {"first": "{title!r}"}}, "option 'data.first' may only use plain"),
        ({"url": "https://x/{"}, "option 'url' is not a valid format string"),
        ({"templates": {"t": {"data": {"a": "{text}"}}}}, "option 'templates.t.template_id' is required"),
        ({"templates": {"t": {"template_id": "x", "colour": "red"}}}, "option 'templates.t.colour'"),
        ({"app_secret": None}, "option 'app_secret' is required"),
    ],
)
async def test_bad_options_name_the_option(
    server: WechatServer, redis: tuple[aioredis.Redis, str], options: dict[str, Any], message: str
) -> None:
    client, _ = redis
    merged = {k: v for k, v in {**server.provider_options(), **options}.items() if v is not None}
    config = ProviderConfig("wechat-1", "wechat_template", options=merged)
    with pytest.raises(ValueError, match=message):
        await WechatTemplateProvider(config, ProviderContext(redis=client)).setup()


def test_quota_resets_at_beijing_midnight() -> None:
    beijing_midnight = 1_700_064_000  # 2023-11-16 00:00 in Beijing = 2023-11-15 16:00 UTC
    assert until_quota_reset(beijing_midnight - 10) == 70
    assert until_quota_reset(beijing_midnight) == 86400 + 60


async def test_the_payload_text_is_the_template_data_and_url_the_link_check_reads(
    server: WechatServer, redis: tuple[aioredis.Redis, str]
) -> None:
    provider = await make_provider(
        server, redis, data={"first": "{title}", "keyword1": "{first_name}"}, url="https://{first_name}/x"
    )
    try:
        # the url's values are quoted, but a host made of one value is still the value
        assert provider.payload_text(wechat(1)) == ["Welcome #1", "Ada", "https://Ada/x"]
        assert provider.payload_text(wechat(1, variables={})) == ()  # a missing variable: not sent
    finally:
        await provider.close()
