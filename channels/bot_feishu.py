"""Feishu (Lark) custom group bot (自定义机器人): posts each message to one group chat.

``POST {base_url}/open-apis/bot/v2/hook/{hook_token}`` with
``{timestamp, sign, msg_type, content}`` (``card`` instead of ``content`` for
``interactive``). With signature verification (签名校验) on, ``sign`` is
``base64(HMAC-SHA256(key = f"{timestamp}\\n{secret}", msg = b""))`` with
``timestamp`` in seconds; Feishu refuses a timestamp more than an hour off.
Without ``secret`` the two fields are left out (keyword or IP-whitelist bots).

The bot talks to the group configured in its options, never to the user, so
it needs no address (``address_fields = ()``). Feishu answers HTTP 200 with
``{"code": 0, "msg": "success"}`` (older hooks: ``StatusCode``/``StatusMessage``);
errors carry a non-zero code, some with HTTP 4xx:

===========================================  =========================================
what happened                                outcome
===========================================  =========================================
code 0                                       SENT (Feishu returns no message id)
19021 (sign mismatch or timestamp more than  PERMANENT, code = Feishu's code, and a log
an hour off), 19022 (IP not allowed), 19024  event: the bot's configuration (or this
(keyword not found), 19001 (hook token       host's clock) must be fixed
invalid)
11232 (frequency limited), 9499 whose msg    RETRY, code = Feishu's code, after
says "too many request"                      ``Retry-After`` or 60 s
9499 "Bad Request" (malformed body), any     PERMANENT, code = Feishu's code
other code
HTTP 429 / 5xx                               RETRY after ``Retry-After`` (429: or 60 s)
HTTP 200 without a code                      UNKNOWN ``bad_response``
other HTTP status without a code             PERMANENT
transport failures                           as :mod:`channels.http` (read timeout is
                                             UNKNOWN: Feishu does not dedupe)
===========================================  =========================================

Rate: Feishu allows a custom bot 100 messages a minute and 5 a second; set
``limit_per_window`` on the provider entry to stay under it.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
from collections.abc import Callable
from typing import Any, ClassVar

import httpx
import structlog

from channels.base import Delivery, Outcome, Rendered
from channels.http import HttpProvider, json_body, redact, retry_after_seconds, status_outcome
from channels.options import OptionReader

log = structlog.get_logger(__name__)

HOOK_PATH = "/open-apis/bot/v2/hook/"
#: the bot's configuration is wrong: retrying the same request cannot help
CONFIG_ERRORS = {
    19001: "hook token invalid",
    19021: "signature mismatch or clock more than an hour off",
    19022: "IP not allowed",
    19024: "keyword not found in the message",
}
RATE_LIMITED = frozenset({11232})
AMBIGUOUS = 9499  # Feishu's generic code: "Bad Request", or "too many request" when rate limited
RATE_LIMIT_RETRY_AFTER = 60.0


class MsgType(enum.StrEnum):
    TEXT = "text"  # title and text as plain text
    POST = "post"  # rich text: the title as the post title, one paragraph per line
    INTERACTIVE = "interactive"  # a card: the title as header, the text as lark_md


@dataclasses.dataclass(frozen=True, slots=True)
class FeishuOptions:
    hook_token: str = dataclasses.field(repr=False)
    secret: str | None = dataclasses.field(default=None, repr=False)
    msg_type: MsgType = MsgType.TEXT

    @classmethod
    def parse(cls, reader: OptionReader) -> FeishuOptions:
        return cls(
            hook_token=reader.required("hook_token"),
            secret=reader.text("secret"),
            msg_type=reader.choice("msg_type", MsgType, MsgType.TEXT),
        )


class FeishuBotProvider(HttpProvider[FeishuOptions]):
    """Posts each delivery to the group behind one custom-bot webhook; see the module docstring."""

    type_name: ClassVar[str] = "feishu_bot"
    secret_options: ClassVar[frozenset[str]] = frozenset({"hook_token", "secret"})
    address_fields: ClassVar[tuple[str, ...]] = ()
    max_content_bytes: ClassVar[int] = 20_000  # Feishu cards are limited to about 30 KB of JSON
    default_base_url: ClassVar[str] = "https://open.feishu.cn"
    option_keys: ClassVar[frozenset[str]] = frozenset({"hook_token", "secret", "msg_type"})

    def parse_options(self, reader: OptionReader) -> FeishuOptions:
        return FeishuOptions.parse(reader)

    async def send_one(self, delivery: Delivery) -> Outcome:
        options = self.options
        body = build_body(delivery.content, options.msg_type, options.secret, int(self.now()))
        response = await self.client.post(HOOK_PATH + options.hook_token, json=body)
        outcome = classify(response, self._scrub, self.now())
        if outcome.code.isdigit() and int(outcome.code) in CONFIG_ERRORS:
            log.warning("feishu_bot_refused", provider=self.name, code=outcome.code)
        return outcome

    def transport_outcome(self, exc: httpx.HTTPError) -> Outcome:
        outcome = super().transport_outcome(exc)
        return dataclasses.replace(outcome, detail=self._scrub(outcome.detail))

    def _scrub(self, text: str) -> str:
        return redact(text, self.options.hook_token, self.options.secret or "")


def sign(secret: str, timestamp: int) -> str:
    """Feishu's signature: the HMAC *key* is ``"{timestamp}\\n{secret}"``, the message is empty."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def build_body(content: Rendered, msg_type: MsgType, secret: str | None, timestamp: int) -> dict[str, Any]:
    """The webhook JSON for ``content``, signed when there is a ``secret``."""
    body: dict[str, Any] = {"msg_type": msg_type.value}
    if secret:
        body.update(timestamp=str(timestamp), sign=sign(secret, timestamp))
    if msg_type is MsgType.INTERACTIVE:
        body["card"] = _card(content)
    else:
        body["content"] = _post(content) if msg_type is MsgType.POST else {"text": _plain(content)}
    return body


def _plain(content: Rendered) -> str:
    return f"{content.title}\n{content.text}" if content.title else content.text


def _post(content: Rendered) -> dict[str, Any]:
    paragraphs = [[{"tag": "text", "text": line}] for line in content.text.splitlines() or [""]]
    return {"post": {"zh_cn": {"title": content.title, "content": paragraphs}}}


def _card(content: Rendered) -> dict[str, Any]:
    card: dict[str, Any] = {
        "config": {"wide_screen_mode": True},
        "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": content.text}}],
    }
    if content.title:
        card["header"] = {"title": {"tag": "plain_text", "content": content.title}}
    return card


def classify(response: httpx.Response, scrub: Callable[[str], str], now: float) -> Outcome:
    """The outcome of a webhook answer (see the table in the module docstring); ``now``
    (epoch seconds) reads a ``Retry-After`` date."""
    body = json_body(response)
    code, msg = _code(body)
    status = response.status_code
    if status == 429:
        retry_after = retry_after_seconds(response.headers, now) or RATE_LIMIT_RETRY_AFTER
        return Outcome.retry(str(code if code is not None else status), f"HTTP {status}", retry_after)
    if status >= 500:
        return status_outcome(response, str(code if code is not None else status), f"HTTP {status}", now)
    if code is None:
        if 200 <= status < 300:
            return Outcome.unknown("bad_response", f"HTTP {status} without a code")
        return status_outcome(response, str(status), f"HTTP {status}", now)
    return _by_code(code, scrub(f"code {code}: {msg}"), response, now)


def _by_code(code: int, detail: str, response: httpx.Response, now: float) -> Outcome:
    if code == 0:
        return Outcome.sent()
    if code in CONFIG_ERRORS:
        return Outcome.permanent(str(code), f"{CONFIG_ERRORS[code]} ({detail})")
    if code in RATE_LIMITED or (code == AMBIGUOUS and "too many" in detail.lower()):
        retry_after = retry_after_seconds(response.headers, now) or RATE_LIMIT_RETRY_AFTER
        return Outcome.retry(str(code), f"rate limited ({detail})", retry_after)
    return Outcome.permanent(str(code), detail)


def _code(body: Any) -> tuple[int | None, str]:
    if not isinstance(body, dict):
        return None, ""
    code = body.get("code", body.get("StatusCode"))
    msg = body.get("msg", body.get("StatusMessage", ""))
    return (code if isinstance(code, int) else None), str(msg)


__all__ = ["FeishuBotProvider", "FeishuOptions", "MsgType", "build_body", "classify", "sign"]
