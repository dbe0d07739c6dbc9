"""Link tracking step: rendered content gets signed tracked links and, in HTML e-mail, an
open pixel, so clicks and opens come back as tracking events (:mod:`api.tracking`).

Runs on each message's content right after rendering and before the size check, so
content that tracking makes too large fails as ``content_too_large`` like any other.
Only absolute http(s) links are rewritten: in plain text every such URL, in HTML the
``href`` of ``<a>`` tags (plain URLs in HTML text are not links). Links to reach itself
(``REACH_PUBLIC_URL``: the unsubscribe link, and the tracking base) are left alone, so an
unsubscribe is never counted as a click and never depends on a redirect. What a provider's
content can carry is its class's to say (``tracked_links``, ``open_pixel``): SMS providers
that send a vendor's approved template (Aliyun, Tencent) send no rendered text, so there
is nothing to rewrite. A template with ``tracking: false`` (a password reset: its secret
link must not pass through a redirect) is sent as rendered. Tokens are deterministic, so
a retry renders the same links.

Off when ``REACH_TRACKING_BASE_URL`` is empty: content is sent exactly as rendered.
"""

from __future__ import annotations

import dataclasses
import html
import re

from channels.base import Rendered
from models.messages import ReachMessage
from models.tracking_links import LinkSigner, click_url, open_url, trackable
from reach.settings import Settings

_TEXT_URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TRAILING = ".,;:!?"  # sentence punctuation after a URL is not part of it
_PAIRS = {")": "(", "]": "["}
PIXEL = '<img src="{src}" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0">'


@dataclasses.dataclass(frozen=True)
class LinkTracking:
    signer: LinkSigner
    base_url: str
    own: tuple[str, ...]  # URL prefixes of reach itself, never rewritten

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkTracking | None:
        """None when tracking is off (no ``REACH_TRACKING_BASE_URL``)."""
        base = settings.tracking_base_url.strip().rstrip("/")
        if not base:
            return None
        own = tuple(sorted({base, settings.public_url.strip().rstrip("/")} - {""}))
        return cls(LinkSigner.from_settings(settings), base, own)

    def apply(self, message: ReachMessage, content: Rendered, links: bool, pixel: bool) -> Rendered:
        """``content`` with its links tracked (``links``) and an open pixel (``pixel``, HTML only),
        unless its template says ``tracking: false``."""
        if not content.tracking:
            return content
        text, body = content.text, content.html
        if links:
            text = _TEXT_URL.sub(lambda m: self._text_link(message, m.group(0)), text)
            body = _HREF.sub(lambda m: self._href(message, m), body)
        if pixel and body and signable(message.message_id):
            body = with_pixel(body, open_url(self.signer, self.base_url, message.message_id))
        return dataclasses.replace(content, text=text, html=body)

    def tracked(self, message: ReachMessage, url: str) -> str:
        """The tracked form of ``url``, or ``url`` itself when it is not to be tracked."""
        if not trackable(url) or self._is_own(url) or not signable(message.message_id):
            return url
        return click_url(self.signer, self.base_url, message.message_id, url)

    def _is_own(self, url: str) -> bool:
        return any(url == p or url.startswith((p + "/", p + "?")) for p in self.own)

    def _text_link(self, message: ReachMessage, found: str) -> str:
        url, tail = split_trailing(found)
        return self.tracked(message, url) + tail

    def _href(self, message: ReachMessage, match: re.Match[str]) -> str:
        quote = '"' if match.group(2) is not None else "'"
        value = match.group(2) if match.group(2) is not None else match.group(3)
        url = html.unescape(value).strip()
        new = self.tracked(message, url)
        if new == url:
            return match.group(0)
        return f"{match.group(1)}{quote}{html.escape(new, quote=True)}{quote}"


def signable(message_id: str) -> bool:
    """A token holds message ids of up to 255 bytes; reach's are 24 characters."""
    return 0 < len(message_id.encode()) < 256


def split_trailing(found: str) -> tuple[str, str]:
    """A URL found in text, and the punctuation after it that belongs to the sentence:
    ``.`` ``,`` and the like, and a closing bracket the URL did not open."""
    end = len(found)
    while end:
        last = found[end - 1]
        unopened = last in _PAIRS and found[:end].count(last) > found[:end].count(_PAIRS[last])
        if last not in _TRAILING and not unopened:
            break
        end -= 1
    return found[:end], found[end:]


def with_pixel(body: str, src: str) -> str:
    """``body`` with the pixel just before its last ``</body>``, or at the end."""
    tag = PIXEL.format(src=html.escape(src, quote=True))
    ends = list(_BODY_END.finditer(body))
    if not ends:
        return body + tag
    at = ends[-1].start()
    return body[:at] + tag + body[at:]
