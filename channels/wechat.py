"""WeChat official-account template messages (模板消息), with the access token shared in Redis.

Every call needs an ``access_token``. reach uses the classic getAccessToken
endpoint, ``GET {base_url}/cgi-bin/token?grant_type=client_credential&appid=&secret=``:
a token lives ``expires_in`` seconds (7200 today), fetching one is capped per
day, and each fetch replaces the previous token (WeChat keeps the old one valid
for a few minutes). So the token is fetched by one worker and shared by all,
through Redis:

* key ``<redis_prefix>wechat:token:<app_id>``, TTL ``expires_in`` minus a
  5-minute margin, so a cached token is never one WeChat already dropped;
* when the key is missing, a worker takes the lock
  ``<redis_prefix>wechat:token-lock:<app_id>`` (``SET NX PX``, a few seconds),
  re-reads the key, fetches and stores the token; the others poll the key for
  up to ``timeout`` + 1 seconds instead of fetching too;
* when WeChat calls the token invalid or expired (40001, 40014, 42001), the
  token is removed only if the key still holds that same token
  (compare-and-delete), so a newer token another worker stored is kept; then
  the token is fetched again and the message is sent once more.

The message is ``POST {base_url}/cgi-bin/message/template/send?access_token=``
with ``{touser, template_id, url?, data: {key: {value}}}``; the ``data``
values are format strings over the rendered content (see
:class:`WechatTemplate`).

=========================================  ======================================
what happened                              outcome
=========================================  ======================================
errcode 0                                  SENT, ``provider_message_id`` = msgid
no ``wechat_openid`` in the contact        PERMANENT ``no_address``
no WeChat template for the reach template  PERMANENT ``no_template``
a ``data``/``url`` field names a variable  PERMANENT ``missing_variable``
the message does not have
43004 (user does not follow the account)   INVALID_ADDRESS, code = errcode: the
                                           openid is recorded as not reachable
40003 (invalid openid)                     INVALID_ADDRESS ``40003``
43101 (user refused this template's        PERMANENT ``43101``: the refusal is per
messages)                                  template, so the openid stays usable
40001 / 40014 / 42001 (token invalid or    token refreshed once, message sent
expired)                                   once more; a second refusal is
                                           RETRY with the errcode
45009 (daily API quota reached)            RETRY ``45009`` after the quota resets
                                           (midnight, Beijing time)
-1 (system busy)                           RETRY ``-1``
40037 (invalid template_id), 47003         PERMANENT, code = errcode
(invalid data), any other errcode
token fetch refused: wrong app_id/secret,  RETRY ``auth`` after 5 minutes (and a
IP not whitelisted                         log event): fixing the configuration
                                           makes the message go
token fetch: 45009 / other errcode /       RETRY ``45009`` / ``token``
transport failure
Redis unavailable                          RETRY ``redis``
no other worker stored a token in time     RETRY ``token_busy``
non-200 HTTP status                        429/5xx RETRY, other PERMANENT
transport failures of the send             as :mod:`channels.http` (read timeout
                                           is UNKNOWN: WeChat does not dedupe)
=========================================  ======================================

``detail`` never carries the app secret or a token: WeChat's ``errmsg`` is
kept, query strings are scrubbed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import structlog
from redis.exceptions import RedisError

from channels.base import Delivery, Outcome, OutcomeKind, ProviderConfig, ProviderContext
from channels.http import HttpProvider, contact_field, json_body, redact, status_outcome
from channels.options import OptionReader

log = structlog.get_logger(__name__)

TOKEN_PATH = "/cgi-bin/token"
SEND_PATH = "/cgi-bin/message/template/send"
#: errcodes that mean "this access_token is no good": refresh once, send again
TOKEN_REJECTED = frozenset({40001, 40014, 42001})
#: errcodes of the send that mean the openid cannot be reached
NOT_REACHABLE = {
    40003: "invalid openid",
    43004: "user does not follow the official account",
}
#: the user refused messages of this template (拒收); other templates still reach them
TEMPLATE_REFUSED = 43101
#: errcodes of the token fetch that mean our credentials or IP whitelist are wrong
CREDENTIAL_ERRORS = frozenset({40001, 40002, 40013, 40125, 40164, 40243, 41002, 41004, 89503})
QUOTA = 45009
BUSY = -1
AUTH_RETRY_AFTER = 300.0  # seconds; someone has to fix the configuration first
TOKEN_MARGIN = 300  # seconds cut from expires_in (WeChat's old/new token overlap is 5 minutes)
DEFAULT_EXPIRES_IN = 7200
Fetch = Callable[[], Awaitable["tuple[str, int] | Outcome"]]
_POLL = 0.05  # seconds between re-reads of the key while another worker fetches
_BEIJING = 8 * 3600  # UTC+8, no DST: WeChat's daily quotas reset at Beijing midnight
_QUERY_SECRET = re.compile(r"(access_token|secret)=[^&\s\"']+")
_FIELDS = ("template_id", "data", "url")
_OPTION_KEYS = frozenset({"app_id", "app_secret", "redis_prefix", "templates", *_FIELDS})
# Compare-and-delete: drop the cached token only if it is still the one WeChat refused.
_DISCARD = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RELEASE = _DISCARD  # the lock is released the same way: only by the nonce that took it


@dataclasses.dataclass(frozen=True, slots=True)
class WechatTemplate:
    """One WeChat template and how to fill it.

    ``data`` maps the template's keys (``first``, ``keyword1``, ``thing2`` ...)
    to format strings; ``url`` (optional) is one too. The fields they may name
    are ``{title}``, ``{text}``, ``{message_id}``, ``{user_id}`` and any of the
    message's variables (``{order_id}``). In ``url``, values are URL-quoted.
    """

    template_id: str
    data: Mapping[str, str]
    url: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WechatOptions:
    app_id: str
    app_secret: str = dataclasses.field(repr=False)
    default: WechatTemplate | None  # used for reach templates not in ``templates``
    templates: Mapping[str, WechatTemplate]  # reach template name -> WeChat template
    redis_prefix: str = "reach:"

    @classmethod
    def parse(cls, reader: OptionReader, default_prefix: str = "reach:") -> WechatOptions:
        default = _template(reader, reader.options, "", None)
        templates = {
            name: _named_template(reader, name, entry, default)
            for name, entry in _mapping(reader, "templates").items()
        }
        if default is None and not templates:
            raise reader.error("template_id", "is required (or a 'templates' map)")
        return cls(
            app_id=reader.required("app_id"),
            app_secret=reader.required("app_secret"),
            default=default,
            templates=templates,
            redis_prefix=reader.text("redis_prefix", default=default_prefix) or default_prefix,
        )

    def template_for(self, reach_template: str) -> WechatTemplate | None:
        return self.templates.get(reach_template, self.default)

    @property
    def token_key(self) -> str:
        return f"{self.redis_prefix}wechat:token:{self.app_id}"

    @property
    def lock_key(self) -> str:
        return f"{self.redis_prefix}wechat:token-lock:{self.app_id}"


class WechatTemplateProvider(HttpProvider[WechatOptions]):
    """Sends template messages to followers of one official account; see the module docstring.

    Needs ``context.redis`` (a ``redis.asyncio`` client): ``setup`` raises
    ``ValueError`` without it.
    """

    type_name: ClassVar[str] = "wechat_template"
    secret_options: ClassVar[frozenset[str]] = frozenset({"app_secret"})
    address_fields: ClassVar[tuple[str, ...]] = ("wechat_openid",)
    max_content_bytes: ClassVar[int] = 8192  # template messages carry short fields
    default_base_url: ClassVar[str] = "https://api.weixin.qq.com"
    option_keys: ClassVar[frozenset[str]] = _OPTION_KEYS

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        self.clock: Callable[[], float] = time.time  # wall clock, for the quota reset; tests replace it
        self._token: SharedToken | None = None

    @property
    def token(self) -> SharedToken:
        if self._token is None:
            raise RuntimeError(f"provider {self.name!r}: setup() was not called")
        return self._token

    def parse_options(self, reader: OptionReader) -> WechatOptions:
        if self.context.redis is None:
            raise ValueError(f"provider {self.name!r}: WeChat needs Redis (context.redis) to share its token")
        options = WechatOptions.parse(reader, self.context.redis_prefix)
        wait = reader.number("timeout", 10.0) + 1  # a fetch takes at most the HTTP timeout
        self._token = SharedToken(self.context.redis, options.token_key, options.lock_key, wait)
        return options

    async def send_one(self, delivery: Delivery) -> Outcome:
        prepared = self._prepare(delivery)
        if isinstance(prepared, Outcome):
            return prepared
        try:
            return await self._send_with_token(prepared)
        except RedisError as exc:
            return Outcome.retry("redis", f"token cache unavailable: {type(exc).__name__}")

    def transport_outcome(self, exc: httpx.HTTPError) -> Outcome:
        outcome = super().transport_outcome(exc)
        return dataclasses.replace(outcome, detail=self._scrub(outcome.detail))

    def payload_text(self, delivery: Delivery) -> Sequence[str]:
        """The template's data values and its url, as the request carries them."""
        template = self.options.template_for(delivery.message.template)
        body = build_body(delivery, "", template) if template is not None else None
        if not isinstance(body, dict):
            return ()
        url = [body["url"]] if "url" in body else []
        return [*(field["value"] for field in body["data"].values()), *url]

    # -- one message -----------------------------------------------------------------------------

    def _prepare(self, delivery: Delivery) -> dict[str, Any] | Outcome:
        openid = contact_field(delivery, "wechat_openid")
        if openid is None:
            return Outcome.permanent("no_address", "contact has no wechat_openid")
        template = self.options.template_for(delivery.message.template)
        if template is None:
            reason = f"no WeChat template configured for reach template {delivery.message.template!r}"
            return Outcome.permanent("no_template", reason)
        return build_body(delivery, openid, template)

    async def _send_with_token(self, body: dict[str, Any]) -> Outcome:
        token = await self.token.get(self._fetch)
        if isinstance(token, Outcome):
            return token
        outcome = await self._post(body, token)
        if not _token_refused(outcome):
            return outcome
        await self.token.discard(token)
        token = await self.token.get(self._fetch)
        if isinstance(token, Outcome):
            return token
        return await self._post(body, token)

    async def _post(self, body: dict[str, Any], token: str) -> Outcome:
        response = await self.client.post(SEND_PATH, params={"access_token": token}, json=body)
        return classify_send(response, self.clock(), self._scrub)

    # -- the shared token ------------------------------------------------------------------------

    async def _fetch(self) -> tuple[str, int] | Outcome:
        params = {
            "grant_type": "client_credential",
            "appid": self.options.app_id,
            "secret": self.options.app_secret,
        }
        try:
            response = await self.client.get(TOKEN_PATH, params=params)
        except httpx.HTTPError as exc:  # nothing was sent to the user: always a plain retry
            return Outcome.retry("token", self._scrub(f"token fetch failed: {type(exc).__name__}: {exc}"))
        result = classify_token(response, self.clock(), self._scrub)
        if isinstance(result, Outcome):
            if result.code == "auth":
                log.warning("wechat_token_refused", provider=self.name, detail=result.detail)
        else:
            log.info("wechat_token_fetched", provider=self.name, app_id=self.options.app_id)
        return result

    def _scrub(self, text: str) -> str:
        return redact(_QUERY_SECRET.sub(r"\1=***", text), self.options.app_secret)


class SharedToken:
    """One access token shared by every worker through Redis (see the module docstring).

    Works with a ``redis.asyncio`` client with or without ``decode_responses``.
    """

    def __init__(self, redis: Any, key: str, lock_key: str, wait: float) -> None:
        self.redis = redis
        self.key = key
        self.lock_key = lock_key
        self.wait = wait  # how long a worker waits for another one's fetch, in seconds
        self._local = asyncio.Lock()  # one coroutine per process goes for the Redis lock
        self._failed: tuple[float, Outcome] | None = None  # the last failed fetch, and when

    async def cached(self) -> str | None:
        value = await self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    async def get(self, fetch: Fetch) -> str | Outcome:
        """The cached token, or one fetched (by ``fetch``, in this worker or another) and cached.

        An Outcome is ``fetch``'s failure, or RETRY ``token_busy`` when another worker held
        the lock for ``wait`` seconds without storing a token. A failure is handed to every
        caller of this process for ``wait`` seconds rather than fetching once per message.
        """
        token = await self.cached()
        if token is not None:
            return token
        async with self._local:
            token = await self.cached()
            if token is not None:
                return token
            if self._failed is not None and time.monotonic() - self._failed[0] < self.wait:
                return self._failed[1]
            result = await self._refresh(fetch)
            self._failed = (time.monotonic(), result) if isinstance(result, Outcome) else None
            return result

    async def discard(self, token: str) -> bool:
        """Forget ``token`` if it is still the cached one; a newer token is kept."""
        return bool(await self.redis.eval(_DISCARD, 1, self.key, token))

    async def _refresh(self, fetch: Fetch) -> str | Outcome:
        nonce = secrets.token_hex(8)
        if not await self.redis.set(self.lock_key, nonce, nx=True, px=int((self.wait + 1) * 1000)):
            return await self._wait_for_other()
        try:
            token = await self.cached()  # stored by another worker between our read and the lock
            return token if token is not None else await self._fetch_and_store(fetch)
        finally:
            await self.redis.eval(_RELEASE, 1, self.lock_key, nonce)

    async def _wait_for_other(self) -> str | Outcome:
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
            token = await self.cached()
            if token is not None:
                return token
        return Outcome.retry("token_busy", "another worker is fetching the access token", 1.0)

    async def _fetch_and_store(self, fetch: Fetch) -> str | Outcome:
        fetched = await fetch()
        if isinstance(fetched, Outcome):
            return fetched
        token, expires_in = fetched
        await self.redis.set(self.key, token, ex=cache_ttl(expires_in))
        return token


def cache_ttl(expires_in: int) -> int:
    """Seconds to cache a token WeChat gave ``expires_in`` seconds: a margin before it expires."""
    return max(1, expires_in - min(TOKEN_MARGIN, expires_in // 2))


# --- the request ------------------------------------------------------------------------------


def build_body(delivery: Delivery, openid: str, template: WechatTemplate) -> dict[str, Any] | Outcome:
    """The template-send JSON for ``delivery``, or PERMANENT ``missing_variable``."""
    fields = _fields(delivery)
    try:
        data = {key: {"value": _format(fmt, fields)} for key, fmt in template.data.items()}
        body: dict[str, Any] = {"touser": openid, "template_id": template.template_id, "data": data}
        if template.url:
            body["url"] = _format(template.url, {k: quote(str(v), safe="") for k, v in fields.items()})
    except KeyError as exc:
        return Outcome.permanent("missing_variable", f"template variable {exc.args[0]!r} is missing")
    return body


def _fields(delivery: Delivery) -> dict[str, Any]:
    message = delivery.message
    return {
        **message.variables,
        "title": delivery.content.title,
        "text": delivery.content.text,
        "message_id": message.message_id,
        "user_id": message.user_id,
    }


def _format(fmt: str, fields: Mapping[str, Any]) -> str:
    return string.Formatter().vformat(fmt, (), fields)


# --- the answers ------------------------------------------------------------------------------


def classify_send(response: httpx.Response, now: float, scrub: Callable[[str], str]) -> Outcome:
    """The outcome of a template-send answer (see the table in the module docstring)."""
    body = json_body(response)
    errcode = body.get("errcode") if isinstance(body, dict) else None
    if response.status_code != 200:
        return status_outcome(response, str(response.status_code), scrub(f"HTTP {response.status_code}"))
    if not isinstance(errcode, int):
        return Outcome.unknown("bad_response", "HTTP 200 without an errcode")
    detail = scrub(f"errcode {errcode}: {body.get('errmsg', '')}")
    if errcode == 0:
        return Outcome.sent(str(body.get("msgid", "")))
    return _send_error(errcode, detail, now)


def _send_error(errcode: int, detail: str, now: float) -> Outcome:
    code = str(errcode)
    if errcode in NOT_REACHABLE:
        return Outcome.invalid_address(code, f"{NOT_REACHABLE[errcode]} ({detail})")
    if errcode == TEMPLATE_REFUSED:
        return Outcome.permanent(code, f"user refused this template's messages ({detail})")
    if errcode in TOKEN_REJECTED:
        return Outcome.retry(code, f"access token refused ({detail})")
    if errcode == QUOTA:
        return Outcome.retry(code, f"daily API quota reached ({detail})", until_quota_reset(now))
    if errcode == BUSY:
        return Outcome.retry(code, f"WeChat is busy ({detail})")
    return Outcome.permanent(code, detail)


def classify_token(
    response: httpx.Response, now: float, scrub: Callable[[str], str]
) -> tuple[str, int] | Outcome:
    """``(access_token, expires_in)`` from a token answer, or the RETRY for every waiting message."""
    body = json_body(response)
    if response.status_code != 200 or not isinstance(body, dict):
        return Outcome.retry("token", f"token fetch: HTTP {response.status_code}")
    token = body.get("access_token")
    if isinstance(token, str) and token:
        expires_in = body.get("expires_in")
        return token, expires_in if isinstance(expires_in, int) and expires_in > 0 else DEFAULT_EXPIRES_IN
    errcode = body.get("errcode")
    detail = scrub(f"token fetch refused: errcode {errcode}: {body.get('errmsg', '')}")
    if errcode in CREDENTIAL_ERRORS:
        return Outcome.retry("auth", detail, AUTH_RETRY_AFTER)
    if errcode == QUOTA:
        return Outcome.retry(str(QUOTA), detail, until_quota_reset(now))
    return Outcome.retry("token", detail)


def until_quota_reset(now: float) -> float:
    """Seconds from ``now`` to the next midnight in Beijing, when WeChat's daily quotas reset."""
    return 86400 - (now + _BEIJING) % 86400 + 60  # a minute late rather than a minute early


def _token_refused(outcome: Outcome) -> bool:
    return outcome.kind is OutcomeKind.RETRY and outcome.code in {str(c) for c in TOKEN_REJECTED}


# --- options ----------------------------------------------------------------------------------


def _template(
    reader: OptionReader, entry: Mapping[str, Any], where: str, inherited: WechatTemplate | None
) -> WechatTemplate | None:
    """The template described by ``entry`` (top level or one ``templates`` item), or None."""
    unknown = sorted(set(entry) - set(_FIELDS)) if where else []
    if unknown:
        raise reader.error(f"{where}{unknown[0]}", f"is unknown; known: {', '.join(_FIELDS)}")
    template_id = _string(reader, entry, "template_id", where)
    if template_id is None:
        if where:
            raise reader.error(f"{where}template_id", "is required")
        return None
    data = _data(reader, entry, where) or (dict(inherited.data) if inherited else None)
    if not data:
        raise reader.error(f"{where}data", "is required: template key -> format string")
    url = _string(reader, entry, "url", where) or (inherited.url if inherited else None)
    if url is not None:
        _check_format(reader, f"{where}url", url)
    return WechatTemplate(template_id, data, url)


def _named_template(
    reader: OptionReader, name: str, entry: Mapping[str, Any], default: WechatTemplate | None
) -> WechatTemplate:
    template = _template(reader, entry, f"templates.{name}.", default)
    assert template is not None  # an entry without template_id raised
    return template


def _data(reader: OptionReader, entry: Mapping[str, Any], where: str) -> dict[str, str]:
    raw = entry.get("data") or {}
    if not isinstance(raw, Mapping):
        raise reader.error(f"{where}data", "must be a map of template key -> format string")
    data: dict[str, str] = {}
    for key, fmt in raw.items():
        if not isinstance(key, str) or not isinstance(fmt, str):
            raise reader.error(f"{where}data", "must map string keys to format strings")
        _check_format(reader, f"{where}data.{key}", fmt)
        data[key] = fmt
    return data


def _check_format(reader: OptionReader, key: str, fmt: str) -> None:
    """Only plain ``{name}`` fields: no positions, attributes, indexes or conversions."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise reader.error(key, f"is not a valid format string ({exc})") from None
    for _, field, _, conversion in parsed:
        if field is not None and (not field.isidentifier() or conversion):
            raise reader.error(key, f"may only use plain {{name}} fields, not {{{field}}}")


def _string(reader: OptionReader, entry: Mapping[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise reader.error(f"{where}{key}", "must be a string")
    return value


def _mapping(reader: OptionReader, key: str) -> Mapping[str, Mapping[str, Any]]:
    value = reader.options.get(key) or {}
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise reader.error(key, "must map reach template names to {template_id, data, url}")
    return value


__all__ = [
    "SharedToken",
    "WechatOptions",
    "WechatTemplate",
    "WechatTemplateProvider",
    "build_body",
    "cache_ttl",
    "classify_send",
    "classify_token",
    "until_quota_reset",
]
