"""The contract every channel provider implements.

A provider is one module with one class, registered by name in
:mod:`channels.registry`, and configured by one entry in the channels file.
The per-channel agent calls it like this::

    provider = ProviderClass(config, context)
    await provider.setup()
    outcomes = await provider.send_batch(deliveries, started)   # one Outcome per delivery, same order
    ...
    await provider.close()

``send_batch`` must not raise for a failure of one message: it reports it as
an :class:`Outcome`. Should it raise anyway (an answer it could not parse),
the agent fails only the messages it was sending, never the batch.
It must never sleep to wait for a rate limit: it returns ``RETRY`` with
``retry_after`` and the agent schedules the next attempt.

``started`` is the claim hook: a provider awaits ``started(deliveries)``
just before it starts the request that carries them (one message, or one
batch request), and never for a delivery it fails without sending. The
agent marks those messages as being sent there, so after a crash only
messages whose send had really begun are recorded ``unknown``; the rest
are sent again.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from models.messages import ReachMessage
from reach.clock import Clock, SystemClock


@dataclasses.dataclass(frozen=True, slots=True)
class Rendered:
    """A message's content after template rendering.

    ``kind`` is the template's (``""`` a plain message, ``upgrade`` a request to upgrade
    the app); ``details`` what the kind carries (an upgrade's ``platform``,
    ``minimum_version`` and ``upgrade_url``). Providers that cannot show a kind send the text.
    """

    title: str
    text: str
    html: str = ""
    tracking: bool = True  # the template allows tracked links and an open pixel
    kind: str = ""
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """One message to send, with its rendered content."""

    message: ReachMessage
    content: Rendered


class OutcomeKind(enum.StrEnum):
    SENT = "sent"  # the provider accepted it (or it is stored, for the inbox)
    RETRY = "retry"  # temporary failure; try again after retry_after seconds
    PERMANENT = "permanent"  # will never succeed as is (bad address, rejected content)
    INVALID_ADDRESS = "invalid_address"  # the address/token is dead: record it, stop using it
    UNKNOWN = "unknown"  # sent, but the provider's answer was lost


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    code: str = ""  # provider's own error code or SMTP reply code, for metrics and results
    detail: str = ""  # human-readable reason; never contains addresses or secrets
    retry_after: float | None = None  # seconds, for RETRY
    provider_message_id: str = ""

    @classmethod
    def sent(cls, provider_message_id: str = "") -> Outcome:
        return cls(OutcomeKind.SENT, provider_message_id=provider_message_id)

    @classmethod
    def retry(cls, code: str, detail: str, retry_after: float | None = None) -> Outcome:
        return cls(OutcomeKind.RETRY, code, detail, retry_after)

    @classmethod
    def permanent(cls, code: str, detail: str) -> Outcome:
        return cls(OutcomeKind.PERMANENT, code, detail)

    @classmethod
    def invalid_address(cls, code: str, detail: str) -> Outcome:
        return cls(OutcomeKind.INVALID_ADDRESS, code, detail)

    @classmethod
    def unknown(cls, code: str, detail: str) -> Outcome:
        return cls(OutcomeKind.UNKNOWN, code, detail)


#: the claim hook of ``send_batch``: awaited just before the request carrying these deliveries starts
StartHook = Callable[[Sequence[Delivery]], Awaitable[None]]


async def no_start_hook(_deliveries: Sequence[Delivery]) -> None:
    """The hook of a caller that needs no claims (tests, idempotent providers)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider entry of a channel in the channels file."""

    name: str  # unique within the channel, e.g. "smtp-primary"
    type: str  # registry key, e.g. "smtp"
    weight: int = 1  # share of the channel's traffic, by weighted random choice
    limit_per_window: int | None = None  # per-provider throttle; None = only the channel's
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderContext:
    """What the worker hands to providers: shared clients, never settings globals."""

    mysql_pool: Any = None  # aiomysql pool, for providers that store (inbox)
    redis: Any = None  # redis.asyncio client, for shared caches (tokens)
    redis_prefix: str = "reach:"  # the deployment's key prefix (REACH_REDIS_PREFIX)
    #: the worker's clock: every time a provider decides by (signed timestamps, token
    #: lifetimes, Retry-After dates, quota resets) is read from it, so tests move it
    clock: Clock = dataclasses.field(default_factory=SystemClock)


class Provider(abc.ABC):
    """Base class of every provider. Subclasses set ``type_name`` and ``secret_options``."""

    type_name: ClassVar[str]
    #: option keys whose values are secrets: masked in listings and never logged
    secret_options: ClassVar[frozenset[str]] = frozenset()
    #: contact fields this provider sends to; a user is reachable through it when the
    #: contact has any of them. Empty: the provider needs no address (inbox, pop-up, bots).
    address_fields: ClassVar[tuple[str, ...]] = ()
    #: sending the same message twice reaches the user once (the provider deduplicates by
    #: message id, or stores by it): an interrupted or unanswered send may simply be repeated
    idempotent: ClassVar[bool] = False
    #: the channel's default ``max_content_bytes`` (rendered title + text + html, UTF-8) is
    #: the smallest of its providers' values; the channels file may set another
    max_content_bytes: ClassVar[int] = 256 * 1024
    #: error codes that mean the recipient opted out of this channel with the provider
    #: (Twilio's 21610: they texted STOP): reach records the opt-out in their preferences
    opt_out_codes: ClassVar[frozenset[str]] = frozenset()
    #: what it sends reaches a person, who may follow its links: with REACH_LINK_DOMAINS set,
    #: every link must point to one of them (agents/delivery/linkcheck.py). False for machine
    #: payloads (webhooks), whose receiver decides what becomes of them.
    checks_links: ClassVar[bool] = True
    #: the rendered text (and HTML) is what the recipient sees, so its http(s) links may be
    #: replaced by tracked ones (agents/delivery/links.py, when REACH_TRACKING_BASE_URL is set)
    tracked_links: ClassVar[bool] = False
    #: the rendered HTML is shown as a page: an open pixel in it reports the message opened
    open_pixel: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def contact_fields(cls, config: ProviderConfig) -> tuple[str, ...]:
        """The contact fields it reads from a message configured as ``config``: its
        ``address_fields``, unless an option names others (a webhook's ``contact_fields``).
        Outbox records carry only the fields of their channel's providers."""
        return cls.address_fields

    def payload_text(self, delivery: Delivery) -> Sequence[str]:
        """Text it sends for ``delivery`` besides the rendered title, text and html (an SMS
        template's parameters, WeChat's template data and url), checked for links like them.
        Called after ``setup``; must not raise (nothing, when the delivery cannot be built)."""
        return ()

    @property
    def name(self) -> str:
        return self.config.name

    def now(self) -> float:
        """Seconds since the epoch by the worker's clock (``context.clock``)."""
        return self.context.clock.now_ms() / 1000

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Open connections; raise ``ValueError`` naming the option for bad configuration."""

    @abc.abstractmethod
    async def send_batch(
        self, deliveries: Sequence[Delivery], started: StartHook = no_start_hook
    ) -> list[Outcome]:
        """Send each delivery; return one outcome per delivery, in order.

        Await ``started`` with the deliveries of each request just before sending it.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Called once, also after a failed setup."""
