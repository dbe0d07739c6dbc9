"""A stand-in for a DingTalk custom group bot (``POST /robot/send?access_token=...``).

It checks what DingTalk checks and answers with DingTalk's errcodes, always
HTTP 200: the access token (40035 missing, 300001 unknown), the signature
recomputed from its own copy of the secret as
``base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))`` (the query
value arrives URL-decoded) with the millisecond timestamp within an hour of
its clock (310000 "invalid timestamp" / "sign not match"), the keywords
(310000 "keywords not in content"), then the body for its ``msgtype``
(40035 / 400105). Accepted messages answer ``{"errcode": 0, "errmsg": "ok"}``.
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

MAX_SKEW_MS = 3600 * 1000  # DingTalk's limit


def errcode(code: int, errmsg: str) -> Reply:
    return Reply(200, json={"errcode": code, "errmsg": errmsg})


class DingtalkServer(ProviderServer):
    """See the module docstring. ``secret=None`` is a bot without signing (加签)."""

    def __init__(
        self,
        *,
        access_token: str = "dingtalk-access-token",
        secret: str | None = "SECdingtalk-bot-secret",
        keywords: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.access_token = access_token
        self.secret = secret
        self.keywords = keywords
        self.clock = clock
        self.delivered = DeliveredLog()  # the bodies DingTalk would have posted to the group
        self._state = threading.Lock()
        self._scripted: list[Reply] = []

    def answer_next(self, *replies: Reply) -> None:
        """Answer the next requests that pass every check with these replies, one each."""
        with self._state:
            self._scripted.extend(replies)

    def provider_options(self) -> dict[str, Any]:
        """Options of a ``dingtalk_bot`` provider entry that posts here."""
        options: dict[str, Any] = {"base_url": self.base_url, "access_token": self.access_token, "timeout": 2}
        if self.secret:
            options["secret"] = self.secret
        return options

    async def handle(self, request: Recorded) -> Reply:
        if request.path != "/robot/send":
            return errcode(404, "请求的URI地址不存在")
        if request.method != "POST":
            return errcode(43002, "需要POST请求")
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        with self._state:
            scripted = self._scripted.pop(0) if self._scripted else None
        if scripted is not None:
            return scripted
        self.delivered.add(request.json())
        return errcode(0, "ok")

    def _refusal(self, request: Recorded) -> Reply | None:
        token = request.query.get("access_token")
        if not token:
            return errcode(40035, "缺少参数 access_token")
        if token != self.access_token:
            return errcode(300001, "token is not exist")
        if self.secret:
            signed = self._signature(request.query)
            if signed is not None:
                return signed
        try:
            body = request.json()
        except ValueError:
            return errcode(40035, "缺少参数 json")
        if self.keywords and not any(k in _text(body) for k in self.keywords):
            return errcode(310000, "keywords not in content")
        return _shape(body)

    def _signature(self, query: Any) -> Reply | None:
        timestamp, given = query.get("timestamp", ""), query.get("sign", "")
        if not timestamp.isdigit() or abs(self.clock() * 1000 - int(timestamp)) > MAX_SKEW_MS:
            return errcode(310000, "invalid timestamp")
        assert self.secret is not None
        message = f"{timestamp}\n{self.secret}".encode()
        digest = hmac.new(self.secret.encode(), message, hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), given):
            return errcode(310000, "sign not match")
        return None


def _text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    part = body.get(body.get("msgtype", ""), {})
    return " ".join(str(v) for v in part.values()) if isinstance(part, dict) else ""


def _filled(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _shape(body: Any) -> Reply | None:
    if not isinstance(body, dict) or "msgtype" not in body:
        return errcode(40035, "缺少参数 msgtype")
    kind = body["msgtype"]
    part = body.get(kind)
    if kind == "text":
        ok = isinstance(part, dict) and _filled(part.get("content"))
    elif kind == "markdown":
        ok = isinstance(part, dict) and all(
            isinstance(part.get(k), str) and part[k] for k in ("title", "text")
        )
    else:
        return errcode(400105, "不支持的消息类型")
    at = body.get("at", {})
    mobiles = at.get("atMobiles", []) if isinstance(at, dict) else None
    if not ok or not isinstance(mobiles, list) or not all(isinstance(m, str) for m in mobiles):
        return errcode(40035, f"缺少参数 {kind}")
    return None
