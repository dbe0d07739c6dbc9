"""Link check, part of the render step: content whose links leave REACH_LINK_DOMAINS is not sent.

It looks at the content as rendered, before anything rewrites it (tracked links
point to reach's own host and would hide where they lead), together with what
the provider adds to its request (:meth:`channels.base.Provider.payload_text`).
A refused message fails for good as ``link_not_allowed``, the detail naming the
field and the host (never the URL, which may hold a token); it is counted with
the other failures in ``reach_messages_failed_codes_total``. What a link is and
how its host is read: :mod:`rules.links`.
"""

from __future__ import annotations

import functools

from agents.plan import Screen
from channels.base import Delivery, Outcome, Provider
from rules.links import LinkDomains, refused_link

LINK_NOT_ALLOWED = "link_not_allowed"


class LinkCheck:
    def __init__(self, domains: LinkDomains | None) -> None:
        self.domains = domains

    def for_provider(self, provider: Provider) -> Screen | None:
        """The check of what ``provider`` sends, or None when nothing is checked (no domains
        configured, or a provider whose payloads no person reads)."""
        if self.domains is None or not provider.checks_links:
            return None
        return functools.partial(self.screen, self.domains, provider)

    @staticmethod
    def screen(domains: LinkDomains, provider: Provider, delivery: Delivery) -> Outcome | None:
        """PERMANENT ``link_not_allowed`` for the first link outside ``domains``, else None."""
        content = delivery.content
        refusal = refused_link(
            domains,
            title=content.title,
            text=content.text,
            html=content.html,
            payload=provider.payload_text(delivery),
        )
        return Outcome.permanent(LINK_NOT_ALLOWED, refusal.detail) if refusal else None
