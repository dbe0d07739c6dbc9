"""DingTalk custom group bot (自定义机器人): posts each message to one group chat.

``POST {base_url}/robot/send?access_token=...&timestamp=...&sign=...`` with
``{msgtype, text|markdown, at}``. With signing (加签) on, ``timestamp`` is in
milliseconds and ``sign = urlencode(base64(HMAC-SHA256(key = secret,
msg = f"{timestamp}\\n{secret}")))``; DingTalk refuses a timestamp more than an
hour off. Without ``secret`` the two parameters are left out (keyword or
IP-whitelist bots).

The bot talks to the group configured in its options, never to the user, so
it needs no address (``address_fields = ()``). DingTalk answers HTTP 200 with
``{"errcode": 0, "errmsg": "ok"}``, or a non-zero errcode:

============================================  =========================================
what happened                                 outcome
============================================  =========================================
errcode 0                                     SENT (DingTalk returns no message id)
310000 (sign mismatch, timestamp off,         PERMANENT ``310000`` and a log event; the
keywords not in content, IP not whitelisted)  errmsg in ``detail`` says which
300001 / 300005 / 400101 (token does not      PERMANENT, code = errcode: the bot's
exist), 400102 (bot stopped), 400106 (no      configuration must be fixed
such bot), 400013 (group dissolved)
130101 / 410100 (sending too fast)            RETRY, code = errcode, after 600 s
-1 (system busy)                              RETRY ``-1``
any other errcode                             PERMANENT, code = errcode
HTTP 429 / 5xx                                RETRY after ``Retry-After``
HTTP 200 without an errcode                   UNKNOWN ``bad_response``
transport failures                            as :mod:`channels.http` (read timeout is
                                              UNKNOWN: DingTalk does not dedupe)
============================================  =========================================

Rate: DingTalk allows a bot 20 messages a minute and, once a bot goes over,
refuses it for 10 minutes; hence RETRY after 600 s rather than the next
minute (every early retry would burn an attempt). Set ``limit_per_window`` on
the provider entry to stay under 20 a minute.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import httpx
import structlog

from channels.base import Delivery, Outcome, Rendered
from channels.http import HttpProvider, json_body, redact, retry_after_seconds, status_outcome
from channels.options import OptionReader

log = structlog.get_logger(__name__)

SEND_PATH = "/robot/send"
SECURITY = 310000  # one code for sign, timestamp, keyword and IP-whitelist refusals
#: the bot's token or the bot itself is gone: its configuration must be fixed
BOT_GONE = {
    300001: "token does not exist",
    300005: "token does not exist",
    400101: "token does not exist",
    400102: "bot is stopped",
    400106: "bot does not exist",
    400013: "group was dissolved",
}
TOO_FAST = frozenset({130101, 410100})
BUSY = -1
#: DingTalk blocks a bot for 10 minutes once it goes over 20 messages a minute
TOO_FAST_RETRY_AFTER = 600.0
_MOBILE = re.compile(r"^\+?[0-9][0-9-]{4,19}$")


class MsgType(enum.StrEnum):
    TEXT = "text"  # title and text as plain text
    MARKDOWN = "markdown"  # the title as heading and notification line, the text as markdown


@dataclasses.dataclass(frozen=True, slots=True)
class DingtalkOptions:
    access_token: str = dataclasses.field(repr=False)
    secret: str | None = dataclasses.field(default=None, repr=False)
    msgtype: MsgType = MsgType.MARKDOWN
    at_mobiles: tuple[str, ...] = ()  # group members to @-mention, by mobile number

    @classmethod
    def parse(cls, reader: OptionReader) -> DingtalkOptions:
        return cls(
            access_token=reader.required("access_token"),
            secret=reader.text("secret"),
            msgtype=reader.choice("msgtype", MsgType, MsgType.MARKDOWN),
            at_mobiles=_mobiles(reader),
        )


class DingtalkBotProvider(HttpProvider[DingtalkOptions]):
    """Posts each delivery to the group behind one custom-bot webhook; see the module docstring."""

    type_name: ClassVar[str] = "dingtalk_bot"
    secret_options: ClassVar[frozenset[str]] = frozenset({"access_token", "secret"})
    address_fields: ClassVar[tuple[str, ...]] = ()
    max_content_bytes: ClassVar[int] = 20_000  # DingTalk refuses messages over 20,000 bytes
    default_base_url: ClassVar[str] = "https://oapi.dingtalk.com"
    option_keys: ClassVar[frozenset[str]] = frozenset({"access_token", "secret", "msgtype", "at_mobiles"})

    def parse_options(self, reader: OptionReader) -> DingtalkOptions:
        return DingtalkOptions.parse(reader)

    async def send_one(self, delivery: Delivery) -> Outcome:
        options = self.options
        params = query(options.access_token, options.secret, self.context.clock.now_ms())
        body = build_body(delivery.content, options.msgtype, options.at_mobiles)
        response = await self.client.post(SEND_PATH, params=params, json=body)
        outcome = classify(response, self._scrub, self.now())
        if outcome.code == str(SECURITY):
            log.warning("dingtalk_bot_refused", provider=self.name, code=outcome.code)
        return outcome

    def transport_outcome(self, exc: httpx.HTTPError) -> Outcome:
        outcome = super().transport_outcome(exc)
        return dataclasses.replace(outcome, detail=self._scrub(outcome.detail))

    def _scrub(self, text: str) -> str:
        return redact(text, self.options.access_token, self.options.secret or "")


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature before URL encoding: the HMAC key is the secret, the message
    ``"{timestamp_ms}\\n{secret}"``."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def query(access_token: str, secret: str | None, timestamp_ms: int) -> dict[str, str]:
    """The query parameters; httpx percent-encodes each value once, which is the ``urlEncode``
    DingTalk asks for (``+``, ``/`` and ``=`` of the base64 become ``%2B``, ``%2F``, ``%3D``)."""
    params = {"access_token": access_token}
    if secret:
        params.update(timestamp=str(timestamp_ms), sign=sign(secret, timestamp_ms))
    return params


def build_body(content: Rendered, msgtype: MsgType, at_mobiles: Sequence[str]) -> dict[str, Any]:
    """The send JSON; @-mentions must also appear in the text for DingTalk to render them."""
    mentions = " ".join(f"@{mobile}" for mobile in at_mobiles)
    body: dict[str, Any] = {"msgtype": msgtype.value}
    if msgtype is MsgType.MARKDOWN:
        heading = f"#### {content.title}\n\n" if content.title else ""
        text = heading + content.text + (f"\n\n{mentions}" if mentions else "")
        body["markdown"] = {"title": content.title or content.text[:64], "text": text}
    else:
        plain = f"{content.title}\n{content.text}" if content.title else content.text
        body["text"] = {"content": plain + (f"\n{mentions}" if mentions else "")}
    if at_mobiles:
        body["at"] = {"atMobiles": list(at_mobiles), "isAtAll": False}
    return body


def classify(response: httpx.Response, scrub: Callable[[str], str], now: float) -> Outcome:
    """The outcome of a send answer (see the table in the module docstring); ``now`` (epoch
    seconds) reads a ``Retry-After`` date."""
    body = json_body(response)
    if not isinstance(body, dict):
        body = {}
    errcode = body.get("errcode")
    status = response.status_code
    unexplained = status != 200 and not isinstance(errcode, int)
    if (status == 429 or status >= 500 or unexplained) and errcode not in TOO_FAST:
        code = str(errcode) if isinstance(errcode, int) else str(status)
        return status_outcome(response, code, f"HTTP {status}", now)
    if not isinstance(errcode, int):
        return Outcome.unknown("bad_response", "HTTP 200 without an errcode")
    return _by_code(errcode, scrub(f"errcode {errcode}: {body.get('errmsg', '')}"), response, now)


def _by_code(errcode: int, detail: str, response: httpx.Response, now: float) -> Outcome:
    code = str(errcode)
    if errcode == 0:
        return Outcome.sent()
    if errcode in TOO_FAST:
        retry_after = retry_after_seconds(response.headers, now) or TOO_FAST_RETRY_AFTER
        return Outcome.retry(code, f"sending too fast ({detail})", retry_after)
    if errcode == BUSY:
        return Outcome.retry(code, f"DingTalk is busy ({detail})")
    if errcode == SECURITY:
        return Outcome.permanent(code, f"refused by the bot's security settings ({detail})")
    if errcode in BOT_GONE:
        return Outcome.permanent(code, f"{BOT_GONE[errcode]} ({detail})")
    return Outcome.permanent(code, detail)


def _mobiles(reader: OptionReader) -> tuple[str, ...]:
    raw = reader.options.get("at_mobiles") or ()
    values = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise reader.error("at_mobiles", "must be a list of mobile numbers (or a comma-separated string)")
    mobiles = tuple(v.strip() for v in values if v.strip())
    for mobile in mobiles:
        if not _MOBILE.match(mobile):
            raise reader.error("at_mobiles", "must hold mobile numbers (digits, optional + and -)")
    return mobiles


__all__ = ["DingtalkBotProvider", "DingtalkOptions", "MsgType", "build_body", "classify", "query", "sign"]
