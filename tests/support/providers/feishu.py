"""A stand-in for a Feishu custom group bot (``/open-apis/bot/v2/hook/<token>``).

It checks what Feishu checks, in Feishu's order, and answers with Feishu's codes:
the hook token (19001), the signature recomputed from its own copy of the
secret as ``base64(HMAC-SHA256(key=f"{timestamp}\\n{secret}", msg=b""))`` with
the timestamp within an hour of its clock (19021), the keywords (19024), then
the body shape for the ``msg_type`` (HTTP 400, 9499 "Bad Request"). Accepted
messages answer ``{"code": 0, "msg": "success", "data": {}}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.support.http_provider import ProviderServer, Recorded, Reply
from tests.support.providers.delivered import DeliveredLog

HOOK = "/open-apis/bot/v2/hook/"
MAX_SKEW = 3600  # seconds, Feishu's limit


def code(value: int, msg: str, status: int = 200) -> Reply:
    return Reply(status, json={"code": value, "msg": msg, "data": {}})


class FeishuServer(ProviderServer):
    """See the module docstring. ``secret=None`` is a bot without signature verification."""

    def __init__(
        self,
        *,
        hook_token: str = "feishu-hook-token",
        secret: str | None = "feishu-bot-secret",
        keywords: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.hook_token = hook_token
        self.secret = secret
        self.keywords = keywords
        self.clock = clock
        self.delivered = DeliveredLog()  # the bodies Feishu would have posted to the group
        self._state = threading.Lock()
        self._scripted: list[Reply] = []

    def answer_next(self, *replies: Reply) -> None:
        """Answer the next requests that pass every check with these replies, one each."""
        with self._state:
            self._scripted.extend(replies)

    def provider_options(self) -> dict[str, Any]:
        """Options of a ``feishu_bot`` provider entry that posts here."""
        options: dict[str, Any] = {"base_url": self.base_url, "hook_token": self.hook_token, "timeout": 2}
        if self.secret:
            options["secret"] = self.secret
        return options

    async def handle(self, request: Recorded) -> Reply:
        if request.method != "POST" or not request.path.startswith(HOOK):
            return Reply(404, body=b"404 page not found")
        if request.path[len(HOOK) :] != self.hook_token:
            return code(19001, "param invalid: incoming webhook access token invalid")
        try:
            body = request.json()
        except ValueError:
            return code(9499, "Bad Request", 400)
        if not isinstance(body, dict):
            return code(9499, "Bad Request", 400)
        return self._checked(body)

    def _checked(self, body: dict[str, Any]) -> Reply:
        if self.secret and not self._signed(body):
            return code(19021, "sign match fail or timestamp is not within one hour from current time")
        if self.keywords and not any(k in text for text in _strings(body) for k in self.keywords):
            return code(19024, "Key Words Not Found")
        if not _well_formed(body):
            return code(9499, "Bad Request", 400)
        with self._state:
            scripted = self._scripted.pop(0) if self._scripted else None
        if scripted is not None:
            return scripted
        self.delivered.add(body)
        return code(0, "success")

    def _signed(self, body: dict[str, Any]) -> bool:
        timestamp, given = body.get("timestamp"), body.get("sign")
        if not isinstance(timestamp, str) or not timestamp.isdigit() or not isinstance(given, str):
            return False
        if abs(self.clock() - int(timestamp)) > MAX_SKEW:
            return False
        assert self.secret is not None
        key = f"{timestamp}\n{self.secret}".encode()
        expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        return hmac.compare_digest(expected, given)


def _well_formed(body: dict[str, Any]) -> bool:
    kind, content = body.get("msg_type"), body.get("content")
    if kind == "text":
        return isinstance(content, dict) and isinstance(content.get("text"), str)
    if kind == "post":
        post = content.get("post") if isinstance(content, dict) else None
        locales = post.values() if isinstance(post, dict) else ()
        return bool(locales) and all(isinstance(v, dict) and _paragraphs(v.get("content")) for v in locales)
    if kind == "interactive":
        card = body.get("card")
        return isinstance(card, dict) and isinstance(card.get("elements"), list)
    return False


def _strings(value: Any) -> list[str]:
    """Every string in a JSON document: Feishu looks for keywords in the message's text."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _paragraphs(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, list) and all(isinstance(e, dict) and "tag" in e for e in p) for p in value
    )
