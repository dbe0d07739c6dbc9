"""The phone index's normal form and keyed hash, and what an incoming message asks for."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api.inbound import OptOut
from models.phones import PhoneHasher, e164, rows_of
from models.profiles import UserProfile


@pytest.mark.parametrize(
    ("written", "normal"),
    [
        ("+15550001111", "+15550001111"),
        ("+1 (555) 000-1111", "+15550001111"),
        ("+44 20 7946 0958", "+442079460958"),
        ("0086 138.0000.0001", "+8613800000001"),
        ("5550001111", None),  # national: no country code to compare with
        ("+0123456789", None),
        ("+1555", None),  # too short
        ("+1234567890123456", None),  # too long
        ("+1555000111x", None),
        ("", None),
    ],
)
def test_numbers_are_compared_in_e164(written: str, normal: str | None) -> None:
    assert e164(written) == normal


def test_the_index_holds_a_keyed_hash_never_the_number() -> None:
    hasher = PhoneHasher(b"index-key")
    digest = hasher.digest("+1 555 000 1111")
    assert digest == hmac.new(b"index-key", b"+15550001111", hashlib.sha256).hexdigest()
    assert digest == hasher.digest("+15550001111") != PhoneHasher(b"other-key").digest("+15550001111")
    profiles = [
        UserProfile("u-1", contact={"phone": "+15550001111", "email": "a@example.com"}),
        UserProfile("u-2", contact={"email": "b@example.com"}),
        UserProfile("u-3", contact={"phone": "555 0001"}),
    ]
    rows = rows_of(profiles, hasher, 7)
    assert rows == [(digest, "u-1", 7)]
    assert "5550001111" not in "".join(row[0] for row in rows)


@pytest.mark.parametrize(
    ("params", "kind"),
    [
        ({"OptOutType": ["STOP"]}, OptOut.STOP),
        ({"OptOutType": ["start"]}, OptOut.START),
        ({"OptOutType": [" HELP "]}, OptOut.HELP),
        ({"OptOutType": ["NONE"]}, OptOut.NONE),
        ({"OptOutType": ["UNSUBSCRIBE"]}, OptOut.NONE),  # Twilio sends the type, never the word
        ({"Body": ["STOP"]}, OptOut.NONE),  # without Advanced Opt-Out's mark, a body is just text
        ({}, OptOut.NONE),
    ],
)
def test_only_twilios_opt_out_type_says_what_a_message_asks_for(
    params: dict[str, list[str]], kind: OptOut
) -> None:
    assert OptOut.of(params) is kind
