"""Links held to the configured domains: hosts read the way a browser reads them."""

from __future__ import annotations

import pytest

from rules.links import LinkDomains, host_of, links_in_html, links_in_text, refused_link

DOMAINS = LinkDomains.parse(["shop.example", "*.cdn.example", "bücher.example"])


def full_width(ascii_text: str) -> str:
    """The full-width forms of ASCII letters and dots (U+FF01..), which UTS 46 maps back."""
    return "".join(chr(ord(c) + 0xFEE0) for c in ascii_text)


def allowed_text(text: str) -> bool:
    return refused_link(DOMAINS, text=text) is None


def allowed_html(markup: str) -> bool:
    return refused_link(DOMAINS, html=markup) is None


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://shop.example/cart", "shop.example"),
        ("HTTPS://SHOP.EXAMPLE/CART", "shop.example"),
        ("https://shop.example:8443/x", "shop.example"),
        ("https://shop.example./x", "shop.example"),
        ("https://shop.example@evil.example/", "evil.example"),  # userinfo: the host follows the @
        ("https://shop.example:443@evil.example", "evil.example"),
        ("https://a@b@evil.example", "evil.example"),
        ("https://evil.example\\@shop.example", "evil.example"),  # \ ends the authority, as /
        ("https://evil.example#@shop.example", "evil.example"),
        ("https://evil.example?@shop.example", "evil.example"),
        ("https:\\\\evil.example", "evil.example"),
        ("https:/\\evil.example", "evil.example"),
        ("https:evil.example", "evil.example"),  # browsers need no slashes after https:
        ("https:///evil.example", "evil.example"),
        ("//evil.example/x", "evil.example"),
        ("ht\ttps://ev\nil.example", "evil.example"),  # tabs and newlines are dropped
        ("  https://evil.example", "evil.example"),
        ("https://evil%2Eexample", "evil.example"),  # escapes in the host are decoded
        ("https://bücher.example", "xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("https://" + full_width("shop.example"), "shop.example"),  # full-width forms map to ASCII
        ("https://shop\u3002example", "shop.example"),  # an ideographic full stop is a dot
        ("https://sh\u043ep.example", "xn--shp-ted.example"),  # a Cyrillic o is another name
        ("https://faß.example", "xn--fa-hia.example"),  # non-transitional, as browsers
        ("https://127.0.0.1/", "127.0.0.1"),
    ],
)
def test_the_host_is_the_one_a_browser_goes_to(url: str, host: str) -> None:
    assert host_of(url) == host


@pytest.mark.parametrize(
    "url",
    [
        "https://",
        "https://[::1]/",
        "https://shop.example%2F@",
        "https://evil.example%00.shop.example",
        "https://\u202eelpmaxe.live",
        "https://shop_ü.example",
    ],
)
def test_hosts_that_are_not_domain_names_are_none(url: str) -> None:
    assert host_of(url) is None


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("Your cart: https://shop.example/cart?id=1.", True),
        ("Your cart: https://shop.example/cart, see you", True),
        ("(https://img.cdn.example/a.png)", True),
        ("https://a.b.cdn.example", True),
        ("https://cdn.example", False),  # *.cdn.example is its subdomains only
        ("https://evilcdn.example", False),
        ("https://bücher.example/", True),
        ("https://xn--bcher-kva.example/", True),
        ("Reset: https://evil.example/reset", False),
        ("Reset: HTTPS://EVIL.EXAMPLE/reset", False),
        ("Reset: https://shop.example@evil.example/reset", False),
        ("Reset: https://shop.example.evil.example/reset", False),
        ("Reset: www.evil.example/reset", False),
        ("Reset: http:\\\\evil.example", False),
        ("Go to https:evil.example now", False),
        ("xhttps://evil.example", False),
        ("https://" + full_width("evil.example"), False),
        ("Nothing to see: https: is a scheme, www is a word", True),
        # a URL inside another counts too: a redirect's target is where the user ends up
        ("https://shop.example/login?next=https://shop.example/cart", True),
        ("https://shop.example/r?to=https://evil.example/", False),
        ("mailto:someone@evil.example javascript:alert(1)", True),  # not links in plain text
    ],
)
def test_links_in_text(text: str, allowed: bool) -> None:
    assert allowed_text(text) is allowed


@pytest.mark.parametrize(
    ("markup", "allowed"),
    [
        ('<a href="https://shop.example/cart">cart</a>', True),
        ('<a href="/orders">orders</a> <a href="#top">top</a> <a href="?page=2">next</a>', True),
        ('<a href="mailto:help@shop.example">mail</a> <a href="tel:+4930123">call</a>', True),
        ('<img src="cid:logo@shop">', True),
        ('<a href="https://evil.example">x</a>', False),
        ('<a href="javascript:alert(1)">x</a>', False),
        ('<a href=" JaVaScRiPt:alert(1)">x</a>', False),
        ('<a href="jav&#x09;ascript:alert(1)">x</a>', False),  # the tab is dropped
        ('<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>', False),
        ('<a href="vbscript:msgbox">x</a>', False),
        ('<a href="myapp://orders/1">x</a>', False),
        ('<a href="//evil.example/x">x</a>', False),
        ('<a href="/\\evil.example/x">x</a>', False),  # a browser reads /\ as //
        ('<a href="https&#58;//evil.example">x</a>', False),
        ('<a href="https://shop.example&#64;evil.example">x</a>', False),
        ("<a href=https://evil.example>unquoted</a>", False),
        ('<img src="https://evil.example/pixel.gif">', False),
        ('<img srcset="https://img.cdn.example/a.png 1x, https://evil.example/b.png 2x">', False),
        ('<form action="https://evil.example/login"><input></form>', False),
        ('<base href="https://evil.example/">', False),
        ('<meta http-equiv="refresh" content="0; url=//evil.example/">', False),
        ("<div style=\"background: url('//evil.example/bg.png')\">x</div>", False),
        ("<style>@import 'https://evil.example/x.css';</style>", False),
        ("<style>p { background: url(javascript:alert(1)) }</style>", False),
        ('<!--[if mso]><a href="//evil.example">x</a><![endif]-->', False),
        ("<p>Visit https://evil.example today</p>", False),
        ('<p title="https://evil.example">x</p>', False),
        ("<p>Visit https://shop.example today</p>", True),
    ],
)
def test_links_in_html(markup: str, allowed: bool) -> None:
    assert allowed_html(markup) is allowed


def test_the_refusal_names_the_field_and_the_host_not_the_url() -> None:
    refusal = refused_link(DOMAINS, title="ok", text="https://evil.example/reset?token=secret")
    assert refusal is not None
    assert (refusal.field, refusal.host) == ("text", "evil.example")
    assert refusal.detail == "a link in the text points to 'evil.example', which is not in REACH_LINK_DOMAINS"
    scheme = refused_link(DOMAINS, html='<a href="javascript:alert(1)">x</a>')
    assert scheme is not None and scheme.detail == (
        "a link in the html has the scheme 'javascript', which is not allowed"
    )
    odd = refused_link(DOMAINS, payload=["https://[::1]/x"])
    assert odd is not None and odd.field == "payload" and "not a domain name" in odd.detail


def test_text_links_stop_at_the_authority_and_leave_trailing_punctuation() -> None:
    assert list(links_in_text("see https://shop.example/a?b=c, or www.shop.example.")) == [
        "https://shop.example",
        "https://www.shop.example",
    ]
    assert links_in_html('<a href="/x">https://shop.example</a>')[:2] == ["/x", "https://shop.example"]


@pytest.mark.parametrize(
    "entry", ["https://shop.example", "shop.example/path", "shop.example:443", "*", "*.", "a.*.example", ""]
)
def test_a_domain_entry_that_is_not_a_host_name_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a host name"):
        LinkDomains.parse([entry])


def test_domain_entries_are_normalised() -> None:
    domains = LinkDomains.parse([" Shop.Example ", "*.BÜCHER.example", full_width("cdn") + ".example"])
    assert domains.exact == {"shop.example", "cdn.example"}
    assert domains.suffixes == (".xn--bcher-kva.example",)
    assert not LinkDomains.parse([])
