"""A stand-in for the WeChat official-account API: access tokens and template messages.

``GET /cgi-bin/token`` checks ``grant_type``, ``appid`` and ``secret`` and
issues ``token-1``, ``token-2``... (counted in :attr:`WechatServer.token_fetches`);
``POST /cgi-bin/message/template/send`` checks the token (unknown: 40001,
expired: 42001), the ``touser``, the ``template_id`` (40037) and the ``data``
shape (47003), then answers the errcode scripted for that openid, if any, or
``{"errcode": 0, "msgid": n}``. Every answer is HTTP 200, as WeChat's are.
"""

from __future__ import annotations

import threading
from typing import Any

from tests.support.http_provider import ProviderServer, Recorded, Reply
from tests.support.providers.delivered import DeliveredLog

ERRMSG = {
    40001: "invalid credential, access_token is invalid or not latest",
    40003: "invalid openid",
    40013: "invalid appid",
    40037: "invalid template_id",
    40125: "invalid appsecret",
    41001: "access_token missing",
    42001: "access_token expired",
    43004: "require subscribe",
    43101: "user refuse to accept the msg",
    45009: "reach max api daily quota limit",
    47003: "argument invalid! data.keyword1.value invalid",
    -1: "system error",
}


def errcode(code: int) -> Reply:
    return Reply(200, json={"errcode": code, "errmsg": ERRMSG.get(code, "error")})


class WechatServer(ProviderServer):
    """See the module docstring. State changes are safe from the test thread."""

    def __init__(
        self,
        *,
        app_id: str = "wx-test-app",
        app_secret: str = "wechat-app-secret",
        template_ids: frozenset[str] = frozenset({"tmpl-welcome", "tmpl-order"}),
        expires_in: int = 7200,
    ) -> None:
        super().__init__()
        self.app_id = app_id
        self.app_secret = app_secret
        self.template_ids = template_ids
        self.expires_in = expires_in
        self.delivered = DeliveredLog()  # the template-send bodies WeChat accepted
        self._state = threading.Lock()
        self._tokens: dict[str, int] = {}  # token -> 0 valid, else the errcode it now gets
        self._openid_errcodes: dict[str, int] = {}
        self._send_errcodes: list[int] = []
        self._fetches = 0

    # -- control -------------------------------------------------------------------------------
    @property
    def token_fetches(self) -> int:
        with self._state:
            return self._fetches

    def expire_tokens(self, code: int = 42001) -> None:
        """Every token issued so far gets ``code`` (42001 expired, 40001 invalid) from now on."""
        with self._state:
            self._tokens = dict.fromkeys(self._tokens, code)

    def fail_openid(self, openid: str, code: int) -> None:
        """Sends to ``openid`` get ``code`` (43101, 40003...) until cleared with code 0."""
        with self._state:
            self._openid_errcodes[openid] = code

    def fail_next_sends(self, *codes: int) -> None:
        """The next template sends with a valid token get these errcodes, one each."""
        with self._state:
            self._send_errcodes.extend(codes)

    def provider_options(self) -> dict[str, Any]:
        """Options of a ``wechat_template`` provider entry that sends here."""
        return {
            "base_url": self.base_url,
            "app_id": self.app_id,
            "app_secret": self.app_secret,
            "template_id": "tmpl-welcome",
            "data": {"first": "{title}", "keyword1": "{text}"},
            "timeout": 2,
        }

    # -- the API -------------------------------------------------------------------------------
    async def handle(self, request: Recorded) -> Reply:
        if request.method == "GET" and request.path == "/cgi-bin/token":
            return self._token(request)
        if request.method == "POST" and request.path == "/cgi-bin/message/template/send":
            return self._send(request)
        return Reply(404, body=b"not found")

    def _token(self, request: Recorded) -> Reply:
        query = request.query
        if query.get("grant_type") != "client_credential":
            return Reply(200, json={"errcode": 40002, "errmsg": "invalid grant_type"})
        if query.get("appid") != self.app_id:
            return errcode(40013)
        if query.get("secret") != self.app_secret:
            return errcode(40125)
        with self._state:
            self._fetches += 1
            token = f"token-{self._fetches}"
            self._tokens[token] = 0
        return Reply(200, json={"access_token": token, "expires_in": self.expires_in})

    def _send(self, request: Recorded) -> Reply:
        token = request.query.get("access_token")
        if not token:
            return errcode(41001)
        with self._state:
            token_state = self._tokens.get(token, 40001)
        if token_state:
            return errcode(token_state)
        body = _json(request)
        problem = self._check(body)
        if problem:
            return errcode(problem)
        with self._state:
            scripted = self._openid_errcodes.get(body["touser"]) or (
                self._send_errcodes.pop(0) if self._send_errcodes else 0
            )
        if scripted:
            return errcode(scripted)
        msgid = 1000 + self.delivered.add(body)
        return Reply(200, json={"errcode": 0, "errmsg": "ok", "msgid": msgid})

    def _check(self, body: Any) -> int:
        if not isinstance(body, dict) or not isinstance(body.get("touser"), str) or not body["touser"]:
            return 40003
        if body.get("template_id") not in self.template_ids:
            return 40037
        data = body.get("data")
        if not isinstance(data, dict) or not data or not all(_is_value(v) for v in data.values()):
            return 47003
        if "url" in body and not str(body["url"]).startswith(("http://", "https://")):
            return 47003
        return 0


def _is_value(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("value"), str)


def _json(request: Recorded) -> Any:
    try:
        return request.json()
    except ValueError:
        return None
