"""The render step's link check: content linking outside the domains fails, never goes out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agents.delivery.linkcheck import LinkCheck
from agents.plan import deliveries_for
from channels.base import Delivery, Outcome, OutcomeKind, Provider, ProviderConfig, ProviderContext, StartHook
from channels.sms_aliyun import AliyunSmsProvider
from channels.webhook import WebhookProvider
from models.messages import ReachMessage
from reach.runtime import link_domains_of
from reach.settings import Settings
from rules.links import LinkDomains
from rules.model import Template
from tests.unit.agents.delivery.conftest import message

DOMAINS = LinkDomains.parse(["shop.example"])
TEMPLATES = {
    "t": Template(
        "t",
        "Your order",
        "Pay here: {{ properties.pay_url }}",
        "<a href='{{ properties.pay_url }}'>pay</a>",
    )
}


class Plain(Provider):
    type_name = "plain"

    async def send_batch(self, deliveries: Sequence[Delivery], started: StartHook) -> list[Outcome]:
        return [Outcome.sent() for _ in deliveries]


def provider(cls: type[Provider] = Plain) -> Provider:
    return cls(ProviderConfig("p", cls.type_name), ProviderContext())


def paying(n: int, url: str) -> ReachMessage:
    return message(n, variables={"properties": {"pay_url": url}})


def test_a_message_linking_outside_the_domains_fails_as_link_not_allowed() -> None:
    screen = LinkCheck(DOMAINS).for_provider(provider())
    good, bad = paying(1, "https://shop.example/pay"), paying(2, "https://shop.example@evil.example/pay")
    prepared = deliveries_for([good, bad], TEMPLATES, 10_000, screen)
    ready, failed = prepared.ready, prepared.failed
    assert [d.message.message_id for d in ready] == ["m-1"]
    [(message_2, outcome)] = failed
    assert message_2.message_id == "m-2"
    assert (outcome.kind, outcome.code) == (OutcomeKind.PERMANENT, "link_not_allowed")
    assert outcome.detail == "a link in the text points to 'evil.example', which is not in REACH_LINK_DOMAINS"


def test_the_check_reads_the_content_as_rendered_not_as_rewritten() -> None:
    # what a later step (tracked links) makes of the content is not what is checked
    screen = LinkCheck(DOMAINS).for_provider(provider())
    assert screen is not None
    rendered = deliveries_for([paying(1, "https://evil.example")], TEMPLATES, 10_000).ready[0]
    assert screen(rendered) is not None


def test_nothing_is_checked_without_domains_or_for_a_webhook() -> None:
    assert LinkCheck(None).for_provider(provider()) is None
    assert LinkCheck(DOMAINS).for_provider(provider(WebhookProvider)) is None
    prepared = deliveries_for([paying(1, "javascript:alert(1)")], TEMPLATES, 10_000, None)
    ready, failed = prepared.ready, prepared.failed
    assert (len(ready), failed) == (1, [])


def test_what_an_sms_template_provider_sends_is_checked_too() -> None:
    # Aliyun sends its own template filled with the message's scalar variables, not the text
    screen = LinkCheck(DOMAINS).for_provider(provider(AliyunSmsProvider))
    assert screen is not None
    plain = Template("t", "", "Your code")
    sneaky = message(1, variables={"link": "https://evil.example/x", "properties": {}})
    prepared = deliveries_for([sneaky], {"t": plain}, 10_000, screen)
    ready, failed = prepared.ready, prepared.failed
    assert ready == []
    assert failed[0][1].detail == (
        "a link in the payload points to 'evil.example', which is not in REACH_LINK_DOMAINS"
    )


def test_the_worker_adds_its_own_host_and_refuses_an_entry_that_is_not_a_host() -> None:
    own = link_domains_of(Settings(link_domains=("shop.example",), public_url="https://Reach.Example:8443/"))
    assert own is not None and own.exact == {"shop.example", "reach.example"}
    assert link_domains_of(Settings()) is None
    with pytest.raises(ValueError, match=r"'https://shop\.example' is not a host name"):
        link_domains_of(Settings(link_domains=("https://shop.example",)))
