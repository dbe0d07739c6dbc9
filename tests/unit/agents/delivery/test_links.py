"""Link tracking step: which links become tracked, and that each leads back to its target."""

from __future__ import annotations

import html
import re

import pytest

from agents.delivery.links import LinkTracking, split_trailing, with_pixel
from agents.plan import deliveries_for
from channels.base import Delivery, Rendered
from models.messages import ReachMessage
from models.tracking_links import CLICK, OPEN, LinkSigner
from reach.settings import Settings
from rules.model import Template

BASE = "https://t.reach.test"
SETTINGS = Settings(tracking_base_url=BASE, public_url="https://api.reach.test")
TRACKING = LinkTracking.from_settings(SETTINGS)
SIGNER = LinkSigner.from_settings(SETTINGS)
TRACKED = re.compile(re.escape(BASE) + r"/v1/t/c/([A-Za-z0-9_-]+)")
PIXEL = re.compile(re.escape(BASE) + r"/v1/t/o/([A-Za-z0-9_-]+)\.gif")


def message(message_id: str = "m-1") -> ReachMessage:
    return ReachMessage(message_id, "u-1", "r", "t", "email", "smtp", 5, "e", "ev", 1, 1, {}, {})


def apply(content: Rendered, links: bool = True, pixel: bool = False) -> Rendered:
    assert TRACKING is not None
    return TRACKING.apply(message(), content, links, pixel)


def targets(text: str) -> list[str]:
    """Where each tracked link in ``text`` leads, checked against the signer."""
    found = []
    for token in TRACKED.findall(text):
        link = SIGNER.verify(token)
        assert (link.kind, link.message_id) == (CLICK, "m-1")
        found.append(link.url)
    return found


def test_off_without_a_base_url() -> None:
    assert LinkTracking.from_settings(Settings()) is None
    assert LinkTracking.from_settings(Settings(tracking_base_url="  ")) is None


def test_text_urls_become_tracked_links_that_lead_to_them() -> None:
    text = "Cart: https://shop.example/cart?id=1&x=2. Offer (https://shop.example/o), or http://a.example/p!"
    out = apply(Rendered("title https://shop.example/t", text)).text
    assert targets(out) == [
        "https://shop.example/cart?id=1&x=2",
        "https://shop.example/o",
        "http://a.example/p",
    ]
    assert "https://shop.example" not in out
    assert out.startswith("Cart: " + BASE) and out.endswith("!")
    assert TRACKED.sub("L", out) == "Cart: L. Offer (L), or L!"


def test_the_title_is_left_alone() -> None:
    assert apply(Rendered("see https://shop.example/t", "")).title == "see https://shop.example/t"


def test_html_hrefs_are_tracked_and_stay_escaped() -> None:
    body = (
        '<p><a class="b" href="https://shop.example/c?a=1&amp;b=2">cart</a> '
        "<A HREF='http://shop.example/x'>x</A> https://shop.example/plain "
        '<a href="mailto:help@shop.example">mail</a> <a href="/relative">r</a></p>'
    )
    out = apply(Rendered("t", "", body)).html
    assert targets(html.unescape(out)) == ["https://shop.example/c?a=1&b=2", "http://shop.example/x"]
    assert "https://shop.example/plain" in out  # text in HTML is not a link
    assert 'href="mailto:help@shop.example"' in out and 'href="/relative"' in out
    assert '<a class="b" href="' + BASE in out and "<A HREF='" + BASE in out


def test_links_to_reach_itself_are_not_tracked() -> None:
    unsubscribe = "https://api.reach.test/v1/unsubscribe/tok"
    text = f"Stop: {unsubscribe} or {BASE}/about but https://api.reach.test.evil.example/x"
    out = apply(Rendered("t", text, f'<a href="{unsubscribe}">stop</a>')).text
    assert unsubscribe in out and f"{BASE}/about" in out
    assert targets(out) == ["https://api.reach.test.evil.example/x"]


def test_the_pixel_goes_before_the_end_of_the_body() -> None:
    out = apply(Rendered("t", "text", "<html><body><p>hi</p></body></html>"), links=False, pixel=True)
    assert out.html.startswith("<html><body><p>hi</p><img src=") and out.html.endswith("</body></html>")
    [token] = PIXEL.findall(out.html)
    assert SIGNER.verify(token).kind == OPEN and SIGNER.verify(token).message_id == "m-1"
    assert out.text == "text"
    assert with_pixel("<p>x</p>", "s").startswith("<p>x</p><img src=")


def test_no_pixel_in_a_text_only_message_nor_where_the_provider_has_none() -> None:
    assert apply(Rendered("t", "text", ""), pixel=True).html == ""
    assert "<img" not in apply(Rendered("t", "x", "<p>y</p>"), pixel=False).html


def test_links_are_left_alone_where_the_provider_cannot_carry_them() -> None:
    content = Rendered("t", "https://shop.example/a", '<a href="https://shop.example/b">b</a>')
    assert apply(content, links=False) == content


def test_a_template_without_tracking_is_sent_as_rendered() -> None:
    content = Rendered("t", "reset: https://shop.example/reset?k=s3cret", "<p>x</p>", tracking=False)
    assert apply(content, links=True, pixel=True) == content


def test_the_same_message_renders_the_same_links() -> None:
    content = Rendered("t", "https://shop.example/a")
    assert apply(content) == apply(content)


@pytest.mark.parametrize(
    ("found", "url", "tail"),
    [
        ("https://a.example/x.", "https://a.example/x", "."),
        ("https://a.example/x?!", "https://a.example/x", "?!"),
        ("https://a.example/wiki/A_(b)", "https://a.example/wiki/A_(b)", ""),
        ("https://a.example/x)", "https://a.example/x", ")"),
        ("https://a.example/x]).", "https://a.example/x", "])."),
    ],
)
def test_sentence_punctuation_after_a_url_is_not_part_of_it(found: str, url: str, tail: str) -> None:
    assert split_trailing(found) == (url, tail)


def test_tracked_links_count_against_the_content_limit() -> None:
    templates = {"t": Template("t", "title", "https://shop.example/" + "a" * 40)}
    assert TRACKING is not None
    finish = lambda m, c: TRACKING.apply(m, c, True, False)  # noqa: E731
    prepared = deliveries_for([message()], templates, 100)
    plain, _ = prepared.ready, prepared.failed
    assert len(plain) == 1
    prepared = deliveries_for([message()], templates, 100, finish=finish)
    ready, failed = prepared.ready, prepared.failed
    assert ready == [] and [o.code for _, o in failed] == ["content_too_large"]


def test_a_message_id_no_token_can_hold_leaves_the_content_as_rendered() -> None:
    assert TRACKING is not None
    content = Rendered("t", "https://shop.example/a", "<p>x</p>")
    assert TRACKING.apply(message("m" * 300), content, True, True) == content


def test_the_link_check_sees_the_links_as_written_and_tracking_comes_after() -> None:
    templates = {"t": Template("t", "title", "https://shop.example/a")}
    assert TRACKING is not None
    seen: list[str] = []

    def screen(delivery: Delivery) -> None:
        seen.append(delivery.content.text)

    finish = lambda m, c: TRACKING.apply(m, c, True, False)  # noqa: E731
    prepared = deliveries_for([message()], templates, 10_000, screen, finish)
    [ready], _ = prepared.ready, prepared.failed
    assert seen == ["https://shop.example/a"]
    assert targets(ready.content.text) == ["https://shop.example/a"]
