"""Signed tracking links: a click token redirects only where reach signed it to."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from models.tracking_links import (
    CLICK,
    DOMAIN,
    OPEN,
    LinkError,
    LinkSigner,
    click_url,
    open_url,
    trackable,
)
from reach.settings import Settings

SIGNER = LinkSigner([b"key-one"])
TARGET = "https://shop.example/cart?id=7&from=mail#top"
MID = "0123456789abcdef01234567"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_a_click_token_names_its_message_and_target() -> None:
    link = SIGNER.verify(SIGNER.click_token(MID, TARGET))
    assert (link.kind, link.message_id, link.url) == (CLICK, MID, TARGET)


def test_an_open_token_names_its_message_only() -> None:
    link = SIGNER.verify(SIGNER.open_token(MID))
    assert (link.kind, link.message_id, link.url) == (OPEN, MID, "")


def test_every_altered_character_is_refused() -> None:
    token = SIGNER.click_token(MID, TARGET)
    original = SIGNER.verify(token)
    refused = 0
    for at in range(len(token)):
        altered = token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
        try:
            link = SIGNER.verify(altered)
        except LinkError:
            refused += 1
            continue
        # Only the last character's unused low bits may change without changing a byte.
        assert (at, link) == (len(token) - 1, original)
    assert refused >= len(token) - 1


def test_a_token_naming_another_url_without_the_key_is_refused() -> None:
    payload = b"c" + bytes([len(MID)]) + MID.encode() + b"https://evil.example/"
    forged = b64(bytes(12) + payload)
    with pytest.raises(LinkError):
        SIGNER.verify(forged)
    with pytest.raises(LinkError):
        SIGNER.verify(b64(payload))  # no tag at all
    with pytest.raises(LinkError):
        SIGNER.verify(LinkSigner([b"another-key"]).click_token(MID, "https://evil.example/"))


def test_a_tag_made_for_another_reach_token_does_not_verify() -> None:
    payload = b"c" + bytes([len(MID)]) + MID.encode() + b"https://evil.example/"
    undomained = hmac.new(b"key-one", payload, hashlib.sha256).digest()[:12]
    with pytest.raises(LinkError):
        SIGNER.verify(b64(undomained + payload))
    domained = hmac.new(b"key-one", DOMAIN + payload, hashlib.sha256).digest()[:12]
    assert SIGNER.verify(b64(domained + payload)).url == "https://evil.example/"  # the control


@pytest.mark.parametrize("token", ["", "not a token", "abc.def", "%41%41", "é" * 20, "A" * 5000, "AAAA"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(LinkError):
        SIGNER.verify(token)


def test_characters_outside_base64url_are_refused_not_skipped() -> None:
    token = SIGNER.click_token(MID, TARGET)
    with pytest.raises(LinkError):
        SIGNER.verify(token[:5] + "=" + token[5:])


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "mailto:a@example.com",
        "/relative/path",
        "//evil.example/",
        "https://",
        "https://exa mple.com/",
        "https://example.com/\nSet-Cookie: x",
        "ftp://example.com/file",
    ],
)
def test_only_absolute_http_urls_are_signed(url: str) -> None:
    assert not trackable(url)
    with pytest.raises(ValueError):
        SIGNER.click_token(MID, url)


def test_the_old_key_still_verifies_after_a_rotation() -> None:
    old = LinkSigner([b"old"]).click_token(MID, TARGET)
    rotated = LinkSigner([b"new", b"old"])
    assert rotated.verify(old).url == TARGET
    assert LinkSigner([b"new"]).verify(rotated.click_token(MID, TARGET)).url == TARGET  # newest signs


def test_urls_are_built_on_the_base() -> None:
    assert open_url(SIGNER, "https://t.example/", MID).startswith("https://t.example/v1/t/o/")
    assert open_url(SIGNER, "https://t.example", MID).endswith(".gif")
    assert click_url(SIGNER, "https://t.example", MID, TARGET).startswith("https://t.example/v1/t/c/")


def test_keys_come_from_the_settings_newest_first() -> None:
    signer = LinkSigner.from_settings(Settings(tracking_keys=" k2 , k1 ,"))  # type: ignore[arg-type]
    assert signer.keys == [b"k2", b"k1"]
    assert LinkSigner([b"k2"]).verify(signer.click_token(MID, TARGET)).url == TARGET
    assert signer.verify(LinkSigner([b"k1"]).click_token(MID, TARGET)).url == TARGET
