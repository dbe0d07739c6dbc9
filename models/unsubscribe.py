"""Signed unsubscribe tokens: (user, channel, category) in the link of every message.

A token is ``<payload>.<mac>``, both base64url: the payload is the JSON array
``[user_id, channel, category, issued_at_seconds]``, the mac its HMAC-SHA256 (first 16
bytes) under the newest key. Every configured key verifies, so keys rotate by putting a
new one first and dropping an old one only once the links it signed may expire
(``unsubscribe_token_days``): an e-mail read a year later still unsubscribes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Sequence

import orjson

from reach.settings import Settings

MAC_BYTES = 16


class TokenError(ValueError):
    """The token is malformed, forged (no key verifies it) or older than its lifetime."""


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe:
    user_id: str
    channel: str
    category: str
    issued_at: int  # seconds since the epoch


class TokenSigner:
    def __init__(self, keys: Sequence[bytes], lifetime_seconds: int) -> None:
        if not keys:
            raise ValueError("at least one unsubscribe key is needed")
        self.keys = list(keys)
        self.lifetime = lifetime_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenSigner:
        keys = [k.strip().encode() for k in settings.unsubscribe_keys.get_secret_value().split(",")]
        return cls([k for k in keys if k], settings.unsubscribe_token_days * 86400)

    def sign(self, user_id: str, channel: str, category: str, now_ms: int) -> str:
        payload = _b64(orjson.dumps([user_id, channel, category, now_ms // 1000]))
        return f"{payload}.{_b64(_mac(self.keys[0], payload))}"

    def verify(self, token: str, now_ms: int) -> Unsubscribe:
        """The token's request; raises :class:`TokenError`."""
        payload, _, mac = token.partition(".")
        given = _unb64(mac)
        if not any(hmac.compare_digest(given, _mac(key, payload)) for key in self.keys):
            raise TokenError("the link is not valid")
        request = _decode(payload)
        if now_ms // 1000 - request.issued_at > self.lifetime:
            raise TokenError("the link has expired")
        return request


def _decode(payload: str) -> Unsubscribe:
    try:
        user_id, channel, category, issued_at = orjson.loads(_unb64(payload))
        return Unsubscribe(str(user_id), str(channel), str(category), int(issued_at))
    except (ValueError, TypeError) as exc:
        raise TokenError("the link is not valid") from exc


def _mac(key: bytes, payload: str) -> bytes:
    return hmac.new(key, payload.encode(), hashlib.sha256).digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise TokenError("the link is not valid") from exc
