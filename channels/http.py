"""The common part of every provider that speaks HTTP.

A subclass declares its options and implements :meth:`HttpProvider.send_one`
(or overrides ``send_batch`` for providers with batch endpoints); this base
owns the pooled ``httpx.AsyncClient``, bounds concurrency, and turns transport
failures into outcomes the same way for every provider:

==========================================  ==========================================
what happened                               outcome
==========================================  ==========================================
cannot connect, connect timeout, TLS fails  RETRY ``connect`` (nothing was sent)
the request could not be written            RETRY ``write`` (the provider cannot have
                                            acted on a partial request)
no pool slot within the timeout             RETRY ``pool``
read timeout, connection reset or closed    UNKNOWN ``timeout`` / ``disconnected``: the
after the request was sent                  provider may have sent it. Providers whose
                                            API deduplicates by our message id set
                                            ``idempotent`` and get RETRY instead.
the provider's code raised (an answer it    UNKNOWN ``provider_error`` (PERMANENT when
could not parse, a bug)                     ``idempotent``): never sent again blindly
==========================================  ==========================================

Each request is claimed (the ``started`` hook of ``send_batch``) just before
it is sent, inside its concurrency slot, so messages still waiting for a slot
are not claimed.

Common options, accepted by every HTTP provider: ``base_url`` (every provider
has one, so tests and proxies can point it anywhere), ``timeout`` (seconds,
default 10), ``concurrency`` (requests in flight, default 32), ``tls_verify``
(default true) and ``tls_ca_file`` (an extra CA bundle).
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import email.utils
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx
import structlog

from channels.base import (
    Delivery,
    Outcome,
    Provider,
    ProviderConfig,
    ProviderContext,
    StartHook,
    no_start_hook,
)
from channels.options import OptionReader

log = structlog.get_logger(__name__)

Options = TypeVar("Options")
_UNSET: Any = object()
COMMON_OPTIONS = frozenset({"base_url", "timeout", "concurrency", "tls_verify", "tls_ca_file"})
_MAX_DETAIL = 300


@dataclasses.dataclass(frozen=True, slots=True)
class HttpOptions:
    base_url: str
    timeout: float
    concurrency: int
    tls_verify: bool
    tls_ca_file: str | None

    @classmethod
    def parse(cls, reader: OptionReader, default_base_url: str) -> HttpOptions:
        return cls(
            base_url=reader.url("base_url", default_base_url),
            timeout=reader.number("timeout", 10.0),
            concurrency=reader.integer("concurrency", 32, 1, 1024),
            tls_verify=reader.flag("tls_verify", True),
            tls_ca_file=reader.text("tls_ca_file"),
        )

    def verify(self) -> ssl.SSLContext | bool:
        if not self.tls_verify:
            return False
        context = ssl.create_default_context()
        if self.tls_ca_file:
            context.load_verify_locations(self.tls_ca_file)
        return context


class HttpProvider(Provider, Generic[Options]):
    """Base of HTTP providers. Subclasses set the class attributes and implement
    :meth:`parse_options` (returning their own options object, then ``self.options``)
    and :meth:`send_one`.
    """

    #: the provider's public endpoint; option ``base_url`` overrides it
    default_base_url: ClassVar[str]
    #: option keys this provider accepts besides :data:`COMMON_OPTIONS`
    option_keys: ClassVar[frozenset[str]] = frozenset()
    #: speak HTTP/2 (APNs requires it)
    http2: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig, context: ProviderContext) -> None:
        super().__init__(config, context)
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._options: Options = _UNSET
        self.http: HttpOptions | None = None

    @property
    def options(self) -> Options:
        """This provider's own options, as :meth:`parse_options` returned them."""
        if self._options is _UNSET:
            raise RuntimeError(f"provider {self.name!r}: setup() was not called")
        return self._options

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r}: setup() was not called")
        return self._client

    async def setup(self) -> None:
        reader = OptionReader(self.config.options, self.name)
        reader.reject_unknown(COMMON_OPTIONS | self.option_keys)
        self.http = HttpOptions.parse(reader, self.default_base_url)
        self._options = self.parse_options(reader)
        self._slots = asyncio.Semaphore(self.http.concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.http.base_url,
            timeout=httpx.Timeout(self.http.timeout),
            limits=httpx.Limits(
                max_connections=self.http.concurrency, max_keepalive_connections=self.http.concurrency
            ),
            http2=self.http2,
            verify=self.http.verify(),
            follow_redirects=False,
        )
        await self.start()

    @abc.abstractmethod
    def parse_options(self, reader: OptionReader) -> Options:
        """Validate this provider's own options and return them; raise ``reader.error(...)``."""

    async def start(self) -> None:
        """Called at the end of ``setup``, with the client ready (prefetch tokens and the like)."""

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send_batch(
        self, deliveries: Sequence[Delivery], started: StartHook = no_start_hook
    ) -> list[Outcome]:
        return list(await asyncio.gather(*(self._send_guarded(d, started) for d in deliveries)))

    async def _send_guarded(self, delivery: Delivery, started: StartHook) -> Outcome:
        assert self._slots is not None
        async with self._slots:
            await started([delivery])
            return await self.guard(self.send_one(delivery))

    async def guard(self, call: Any) -> Outcome:
        """Await ``call`` (a coroutine returning an Outcome), classifying transport errors.

        Any other exception (an answer the provider's code could not handle) fails
        this request alone: UNKNOWN, since the request may have reached the provider.
        """
        try:
            outcome: Outcome = await call
            return outcome
        except httpx.HTTPError as exc:
            return self.transport_outcome(exc)
        except Exception as exc:
            return self.error_outcome(exc)

    def error_outcome(self, exc: Exception) -> Outcome:
        """The outcome of a request whose handling raised: never a crashed agent."""
        log.warning("provider.raised", provider=self.name, error=type(exc).__name__)
        detail = f"{type(exc).__name__}: {redact(str(exc))}"
        if self.idempotent:
            return Outcome.permanent("provider_error", detail)
        return Outcome.unknown("provider_error", detail)

    def transport_outcome(self, exc: httpx.HTTPError) -> Outcome:
        detail = f"{type(exc).__name__}: {redact(str(exc))}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return Outcome.retry("connect", detail)
        if isinstance(exc, httpx.PoolTimeout):
            return Outcome.retry("pool", detail)
        if isinstance(exc, httpx.WriteError | httpx.WriteTimeout):
            return Outcome.retry("write", detail)
        code = "timeout" if isinstance(exc, httpx.TimeoutException) else "disconnected"
        if self.idempotent:
            return Outcome.retry(code, detail)
        return Outcome.unknown(code, detail)

    @abc.abstractmethod
    async def send_one(self, delivery: Delivery) -> Outcome:
        """Send one delivery and classify the provider's answer; transport errors may propagate."""


class Prepared(Protocol):
    """A delivery ready for a batch request; ``index`` is its place in the batch."""

    @property
    def index(self) -> int: ...


P = TypeVar("P", bound=Prepared)


async def send_chunked(
    deliveries: Sequence[Delivery],
    prepare: Callable[[int, Delivery], P | Outcome],
    chunk: Callable[[list[P]], list[list[P]]],
    send_chunk: Callable[[list[P]], Awaitable[list[Outcome]]],
    started: StartHook = no_start_hook,
) -> list[Outcome]:
    """``send_batch`` for providers with batch endpoints: prepare each delivery (or fail
    it at once), cut the rest into requests, send them concurrently, and return one
    outcome per delivery in the original order. Each request's deliveries are claimed
    (``started``) just before that request is sent."""
    outcomes: dict[int, Outcome] = {}
    ready: list[P] = []
    for index, delivery in enumerate(deliveries):
        prepared = prepare(index, delivery)
        if isinstance(prepared, Outcome):
            outcomes[index] = prepared
        else:
            ready.append(prepared)
    chunks = chunk(ready)

    async def claim_and_send(part: list[P]) -> list[Outcome]:
        await started([deliveries[item.index] for item in part])
        return await send_chunk(part)

    for part, results in zip(chunks, await asyncio.gather(*map(claim_and_send, chunks)), strict=True):
        outcomes.update((item.index, outcome) for item, outcome in zip(part, results, strict=True))
    return [outcomes[index] for index in range(len(deliveries))]


def retry_after_seconds(headers: Mapping[str, str], now: float) -> float | None:
    """``Retry-After`` as seconds from ``now`` (epoch seconds, the provider's :meth:`now`):
    delta-seconds, or an HTTP date; None when absent or unreadable."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def redact(text: str, *secrets: str) -> str:
    """``text`` shortened for a result row, with the given secret values blanked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:_MAX_DETAIL]


def status_outcome(
    response: httpx.Response, code: str, detail: str, now: float, *, permanent_4xx: bool = True
) -> Outcome:
    """The usual HTTP status rules for an error the provider did not explain better:
    429 and 5xx retry (honouring ``Retry-After``, a date read against ``now``), 408 retries,
    other 4xx are permanent.
    """
    status = response.status_code
    if status == 429 or status >= 500 or status == 408 or not permanent_4xx:
        return Outcome.retry(code, detail, retry_after_seconds(response.headers, now))
    return Outcome.permanent(code, detail)


def json_body(response: httpx.Response) -> Any:
    """The response body as JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def contact_field(delivery: Delivery, field: str) -> str | None:
    value = delivery.message.contact.get(field)
    return value or None


__all__ = [
    "COMMON_OPTIONS",
    "HttpOptions",
    "HttpProvider",
    "contact_field",
    "json_body",
    "redact",
    "retry_after_seconds",
    "send_chunked",
    "status_outcome",
]
