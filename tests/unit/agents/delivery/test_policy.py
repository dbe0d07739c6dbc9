"""The policy step's link: every message that passes carries a signed link for its own
user, channel and category."""

from __future__ import annotations

from agents.delivery.policy import UNSUBSCRIBE_PATH, unsubscribe_url
from models.unsubscribe import TokenSigner, Unsubscribe
from tests.unit.agents.delivery.conftest import NOW, message


def test_the_link_points_at_reachs_endpoint_with_a_token_for_the_message() -> None:
    signer = TokenSigner([b"k"], 86400)
    url = unsubscribe_url(signer, "https://reach.example/", message(7, category="marketing"), NOW)
    base, token = url.split(UNSUBSCRIBE_PATH)
    assert base == "https://reach.example"
    assert signer.verify(token, NOW) == Unsubscribe("u-7", "sms", "marketing", NOW // 1000)
