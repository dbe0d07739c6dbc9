"""Signed tracking links: the e-mail open pixel and tracked (redirecting) links.

A token is one base64url string: a 12-byte HMAC-SHA256 tag, then the payload it signs,
``kind`` (``o`` open, ``c`` click), the message id's length and the message id, and for a
click the target URL. The target travels inside the signed token, so a click needs no
lookup and the redirect goes only where reach itself put a link: a token naming another
URL, altered in any byte, or signed with no configured key is refused, so the endpoint
can never serve as an open redirect. Tokens carry no expiry (a link in a year-old e-mail
still leads where it said); keys rotate by putting a new one first and dropping an old
one when its links may go dead.

The target is carried whole, so a tracked link is longer than the original by about
``4/3 * (14 + len(message_id))`` characters plus the base URL: counted against the
channel's ``max_content_bytes`` like the rest of the content.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from reach.settings import Settings

TAG_BYTES = 12
DOMAIN = b"reach.tracking\x00"  # no tag of another reach token (unsubscribe) can verify here
OPEN, CLICK = "o", "c"
OPEN_PATH, CLICK_PATH = "/v1/t/o/", "/v1/t/c/"
MAX_URL_CHARS = 2048
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,4096}")


class LinkError(ValueError):
    """The token is malformed or forged (no configured key verifies it)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    kind: str  # OPEN or CLICK
    message_id: str
    url: str = ""  # a click's target


def trackable(url: str) -> bool:
    """An absolute http(s) URL with a host, no whitespace or control characters."""
    if len(url) > MAX_URL_CHARS or any(c <= " " or c == "\x7f" for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class LinkSigner:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one tracking key is needed")
        self.keys = list(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkSigner:
        keys = [k.strip().encode() for k in settings.tracking_keys.get_secret_value().split(",")]
        return cls([k for k in keys if k])

    def open_token(self, message_id: str) -> str:
        return self._sign(_payload(OPEN, message_id, ""))

    def click_token(self, message_id: str, url: str) -> str:
        """Raises ``ValueError`` for a URL that is not :func:`trackable`."""
        if not trackable(url):
            raise ValueError("only absolute http(s) URLs are tracked")
        return self._sign(_payload(CLICK, message_id, url))

    def verify(self, token: str) -> Link:
        """The token's link; raises :class:`LinkError`."""
        raw = _unb64(token)
        tag, payload = raw[:TAG_BYTES], raw[TAG_BYTES:]
        if len(tag) < TAG_BYTES or not any(hmac.compare_digest(tag, _tag(k, payload)) for k in self.keys):
            raise LinkError("the link is not valid")
        link = _decode(payload)
        if link.kind == CLICK and not trackable(link.url):
            raise LinkError("the link is not valid")
        return link

    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(_tag(self.keys[0], payload) + payload).rstrip(b"=").decode()


def open_url(signer: LinkSigner, base: str, message_id: str) -> str:
    return f"{base.rstrip('/')}{OPEN_PATH}{signer.open_token(message_id)}.gif"


def click_url(signer: LinkSigner, base: str, message_id: str, target: str) -> str:
    return f"{base.rstrip('/')}{CLICK_PATH}{signer.click_token(message_id, target)}"


def _payload(kind: str, message_id: str, url: str) -> bytes:
    mid = message_id.encode()
    if not 0 < len(mid) < 256:
        raise ValueError("a message id is 1-255 bytes")
    return kind.encode() + bytes([len(mid)]) + mid + url.encode()


def _decode(payload: bytes) -> Link:
    try:
        kind, size = payload[:1].decode(), payload[1]
        mid, url = payload[2 : 2 + size], payload[2 + size :]
        if kind not in (OPEN, CLICK) or len(mid) != size or (kind == OPEN and url):
            raise LinkError("the link is not valid")
        return Link(kind, mid.decode(), url.decode())
    except (IndexError, UnicodeDecodeError) as exc:
        raise LinkError("the link is not valid") from exc


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, DOMAIN + payload, hashlib.sha256).digest()[:TAG_BYTES]


def _unb64(text: str) -> bytes:
    # b64decode would skip characters outside the alphabet: one link, one spelling.
    if not _TOKEN.fullmatch(text):
        raise LinkError("the link is not valid")
    try:
        return base64.urlsafe_b64decode(text.encode("ascii") + b"=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:  # binascii.Error and non-ASCII are ValueErrors
        raise LinkError("the link is not valid") from exc
