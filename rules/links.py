"""Links in rendered messages held to the deployment's own domains (``REACH_LINK_DOMAINS``).

Event properties come from other systems: a template that prints
``{{ properties.reset_url }}`` sends whatever URL the event carried, in the
product's own voice. With link domains configured, every link a message holds
must point to one of them, or the message is not sent. Pure functions, no I/O.

What is a link:

- in text (a title, a plain-text body, an SMS, a push, an inbox item), every
  ``http:``/``https:`` URL and every ``www.`` host, as a phone or a mail client
  would make them clickable (a bare ``shop.example`` that a client may also
  turn into a link is not recognised);
- in HTML, every URL attribute (``href``, ``src``, ``action``, ``srcset``,
  ``<meta http-equiv=refresh>``...) and every CSS ``url(...)``, whatever its
  scheme, plus the URLs in its text and other attributes. A URL attribute may be
  relative (``/orders``, ``#top``), ``mailto:``, ``tel:``, ``sms:`` or ``cid:``
  (an e-mail's inline image); ``javascript:``, ``data:`` and every other scheme
  are refused.

A URL's host is read the way browsers read it (the WHATWG URL standard), not
the way :func:`urllib.parse.urlsplit` does, since the browser is what the user
follows: tabs and newlines inside it are dropped, ``\\`` counts as ``/``, any
number of slashes may follow ``https:``, the host is what follows the *last*
``@`` of the authority (``https://good.example@evil.example`` goes to
``evil.example``), percent-escapes in the host are decoded, and international
names are compared in their ASCII (punycode) form after UTS 46 mapping, so
``good.example`` in full-width letters is ``good.example`` and a look-alike
with a Cyrillic letter is not.

Domain entries are host names (``shop.example``, matched exactly, any port) or
``*.shop.example`` (any subdomain of it, not ``shop.example`` itself: list both).
"""

from __future__ import annotations

import dataclasses
import html
import html.parser
import re
import urllib.parse
from collections.abc import Iterable, Iterator

import idna

__all__ = ["LinkDomains", "RefusedLink", "host_of", "links_in_html", "links_in_text", "refused_link"]

#: schemes a URL attribute of HTML may have besides http(s); none of them names a web host
SAFE_SCHEMES = frozenset({"mailto", "tel", "sms", "cid"})
WEB_SCHEMES = frozenset({"http", "https"})

# A URL in text: http(s): anywhere (followed by any slashes), or www. where a word starts.
_TEXT_LINK = re.compile(r"(?:(https?):[/\\]*|(?<![\w.-])(?=www\.))", re.IGNORECASE)
# Where an authority ends, in text and in URLs (WHATWG ends it at / \ ? #).
_AUTHORITY_END = re.compile(r"[/\\?#\s<>\"'`]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)|@import\s+(['\"])(.*?)\3", re.IGNORECASE | re.DOTALL)
_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\"]*)", re.IGNORECASE)
_HOST_CHARS = re.compile(r"[a-z0-9_\-]+(?:\.[a-z0-9_\-]+)*")
# What may trail a link in prose without being part of it: "see https://shop.example."
_TRAILING = ".,;:!?)]}'\""
# Control characters browsers drop from anywhere in a URL, and those they strip at its ends.
_DROPPED = str.maketrans("", "", "\t\n\r")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))

_URL_ATTRIBUTES = frozenset(
    {
        "href", "src", "action", "formaction", "background", "poster", "cite", "data", "longdesc",
        "lowsrc", "dynsrc", "ping", "manifest", "icon", "codebase", "archive", "xlink:href", "usemap",
    }
)  # fmt: skip
_SRCSET_ATTRIBUTES = frozenset({"srcset", "imagesrcset"})


@dataclasses.dataclass(frozen=True)
class LinkDomains:
    """The hosts links may point to: ``exact`` names and the ``suffixes`` of ``*.`` entries
    (``.shop.example``), all lower-case ASCII (punycode)."""

    exact: frozenset[str]
    suffixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> LinkDomains:
        """From configured entries; raises ``ValueError`` naming an entry that is not a host
        name or ``*.`` followed by one (a scheme, a path, a port or a wildcard elsewhere)."""
        exact: set[str] = set()
        suffixes: list[str] = []
        for entry in entries:
            wildcard = entry.strip().startswith("*.")
            name = entry.strip()[2:] if wildcard else entry.strip()
            host = _ascii_host(name) if name and not _AUTHORITY_END.search(name) else None
            if host is None or ":" in name or "*" in name or "@" in name:
                raise ValueError(f"link domain {entry!r} is not a host name (shop.example) or *.shop.example")
            if wildcard:
                suffixes.append("." + host)
            else:
                exact.add(host)
        return cls(frozenset(exact), tuple(suffixes))

    def allows(self, host: str) -> bool:
        """Whether a normalised host (see :func:`host_of`) is one of the domains."""
        return host in self.exact or any(host.endswith(s) for s in self.suffixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffixes)


@dataclasses.dataclass(frozen=True)
class RefusedLink:
    """Why a message's content may not be sent: the first link that is not allowed."""

    field: str  # title, text, html, or what the provider adds (payload)
    host: str  # normalised; "" for a refused scheme or a host that is not a domain name
    detail: str  # for the result row: names the host or scheme, never the whole URL


def refused_link(
    domains: LinkDomains, *, title: str = "", text: str = "", html: str = "", payload: Iterable[str] = ()
) -> RefusedLink | None:
    """The first link of the content that ``domains`` do not allow, or None.

    ``payload``: text a provider sends besides the rendered fields (WeChat's template data
    and url), read like ``text``.
    """
    fields: list[tuple[str, Iterable[str]]] = [
        ("title", links_in_text(title)),
        ("text", links_in_text(text)),
        ("html", links_in_html(html)),
        ("payload", (link for part in payload for link in links_in_text(part))),
    ]
    for field, links in fields:
        for link in links:
            refusal = _refusal(field, link, domains)
            if refusal is not None:
                return refusal
    return None


def _refusal(field: str, url: str, domains: LinkDomains) -> RefusedLink | None:
    cleaned = _clean(url)
    scheme = _scheme(cleaned)
    if scheme is None and not cleaned.startswith("//"):
        return None  # relative: stays on the page's own site
    if scheme is not None and scheme not in WEB_SCHEMES:
        if scheme in SAFE_SCHEMES:
            return None
        detail = f"a link in the {field} has the scheme {scheme!r}, which is not allowed"
        return RefusedLink(field, "", detail)
    host = host_of(cleaned)
    if host is None:
        shown = _shown(_raw_host(cleaned))
        detail = f"a link in the {field} has the host {shown}, which is not a domain name"
        return RefusedLink(field, "", detail)
    if not domains.allows(host):
        detail = f"a link in the {field} points to {host!r}, which is not in REACH_LINK_DOMAINS"
        return RefusedLink(field, host, detail)
    return None


# --- reading URLs -----------------------------------------------------------------------------


def host_of(url: str) -> str | None:
    """The host a browser would go to for an ``http(s)`` (or scheme-relative ``//``) URL,
    lower-case ASCII; None when it is not a domain name (empty, an IPv6 literal, characters
    no host name has, a label IDNA refuses)."""
    return _ascii_host(_raw_host(_clean(url)))


def _clean(url: str) -> str:
    # What browsers do first: strip C0 controls and spaces at the ends, drop tabs and
    # newlines inside, and read \ as / (they do so for http(s) and scheme-relative URLs).
    return url.strip(_C0_AND_SPACE).translate(_DROPPED).replace("\\", "/")


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _raw_host(url: str) -> str:
    """The host part of a cleaned URL's authority, as written (port and userinfo removed)."""
    scheme = _SCHEME.match(url)
    rest = url[scheme.end() :] if scheme else url
    rest = rest.lstrip("/")  # https:evil.example, https:///evil.example: still evil.example
    end = _AUTHORITY_END.search(rest)
    authority = rest[: end.start()] if end else rest
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host  # an IPv6 literal: not a domain name
    return host.partition(":")[0]


def _ascii_host(raw: str) -> str | None:
    try:
        decoded = urllib.parse.unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        return None
    name = decoded[:-1] if decoded.endswith(".") else decoded
    if not name:
        return None
    if not name.isascii():
        try:  # non-transitional UTS 46, as browsers: faß.example is not fass.example
            name = idna.encode(name, uts46=True, transitional=False, std3_rules=False).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            return None
    name = name.lower()
    return name if _HOST_CHARS.fullmatch(name) else None


def _shown(raw: str) -> str:
    """A host as the result row may show it: escaped (it came from an event) and short."""
    return repr(raw[:100])


def links_in_text(text: str) -> Iterator[str]:
    """Every ``http(s):`` URL and ``www.`` host in plain text, cut at its authority's end
    (the rest of a URL does not change where it goes) and without trailing punctuation."""
    for match in _TEXT_LINK.finditer(text):
        start = match.end()
        end = _AUTHORITY_END.search(text, start)
        authority = text[start : end.start() if end else len(text)].rstrip(_TRAILING)
        if authority:
            yield f"{match.group(1) or 'https'}://{authority}"


def links_in_html(markup: str) -> list[str]:
    """Every URL attribute and CSS ``url(...)`` of an HTML document (any scheme, as written
    after character references are decoded), then the web URLs of its text and other
    attributes."""
    reader = _LinkReader()
    reader.feed(markup)
    reader.close()
    # and the web URLs of the whole markup, in case a tag the parser read differently
    # from a mail client hid one
    return [*reader.links, *links_in_text(html.unescape(markup))]


class _LinkReader(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_style = tag == "style"
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            self._attribute(tag, name, value, values)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._in_style = False

    def handle_comment(self, data: str) -> None:
        # Outlook renders the HTML inside conditional comments (<!--[if mso]>...)
        self.links += links_in_html(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.links += _css_urls(data)
        self.links += links_in_text(data)

    def _attribute(self, tag: str, name: str, value: str, attrs: dict[str, str]) -> None:
        if name in _URL_ATTRIBUTES:
            self.links.append(value)
        elif name in _SRCSET_ATTRIBUTES:
            self.links += [c.split()[0] for c in value.split(",") if c.split()]
        elif name == "style":
            self.links += _css_urls(value)
        elif name == "content" and tag == "meta" and attrs.get("http-equiv", "").lower() == "refresh":
            self.links += _REFRESH_URL.findall(value)
        self.links += links_in_text(value)


def _css_urls(css: str) -> list[str]:
    return [m.group(2) if m.group(2) is not None else m.group(4) for m in _CSS_URL.finditer(css)]
