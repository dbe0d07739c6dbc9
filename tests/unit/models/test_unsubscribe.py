"""Unsubscribe tokens: round trip, key rotation, forgery and expiry."""

from __future__ import annotations

import pytest

from models.unsubscribe import TokenError, TokenSigner, Unsubscribe

NOW = 1_790_000_000_000
DAY_MS = 86_400_000


def test_a_token_names_its_user_channel_and_category() -> None:
    signer = TokenSigner([b"k1"], 10 * 86400)
    token = signer.sign("user/ü 1", "email", "marketing", NOW)
    assert signer.verify(token, NOW + DAY_MS) == Unsubscribe("user/ü 1", "email", "marketing", NOW // 1000)


def test_after_rotation_old_links_still_verify_and_new_ones_use_the_new_key() -> None:
    old = TokenSigner([b"k1"], 10 * 86400)
    rotated = TokenSigner([b"k2", b"k1"], 10 * 86400)
    assert rotated.verify(old.sign("u", "email", "marketing", NOW), NOW).user_id == "u"
    with pytest.raises(TokenError):
        old.verify(rotated.sign("u", "email", "marketing", NOW), NOW)  # signed by k2, which old lacks


def test_a_changed_payload_or_an_unknown_key_is_refused() -> None:
    signer = TokenSigner([b"k1"], 10 * 86400)
    payload, mac = signer.sign("u", "email", "marketing", NOW).split(".")
    other_payload = signer.sign("v", "email", "marketing", NOW).split(".")[0]
    for bad in (f"{other_payload}.{mac}", f"{payload}.", "garbage", f"{payload}.{mac[:-2]}"):
        with pytest.raises(TokenError):
            signer.verify(bad, NOW)
    with pytest.raises(TokenError):
        TokenSigner([b"k3"], 10 * 86400).verify(f"{payload}.{mac}", NOW)


def test_a_token_works_for_its_lifetime_and_not_a_second_longer() -> None:
    signer = TokenSigner([b"k1"], 10 * 86400)
    token = signer.sign("u", "sms", "notification", NOW)
    assert signer.verify(token, NOW + 10 * DAY_MS).channel == "sms"
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, NOW + 10 * DAY_MS + 1000)
