"""Incoming SMS: the opt-out keywords a number sends become its users' preferences.

``POST /v1/inbound/{provider_name}`` is where a ``twilio_sms`` entry's number (or its
Messaging Service) posts incoming messages (Twilio's "A message comes in" webhook). It is
checked exactly as that entry's receipts are (:func:`api.receipt_formats.twilio_verified`:
HMAC-SHA1 under the auth token, or the SharedKey scheme; ``inbound_url`` behind a proxy).
Twilio's Advanced Opt-Out marks a keyword message with ``OptOutType``:

* ``STOP``: every user whose profile phone is the sender's number (:mod:`models.phones`)
  refuses the entry's channel in every category (``<channel>``, ``*``, not allowed,
  source ``twilio_stop``), so their next message there is suppressed (``opted_out``);
* ``START``: that row is allowed again (source ``twilio_start``);
* ``HELP``, and a message without ``OptOutType``, change nothing (Twilio answers HELP).

Every authentic request is answered 200 with an empty TwiML document, a number no profile
has included: Twilio retries anything else, and a retry would find nothing new. What each
did is counted in ``reach_inbound_messages``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from fastapi import APIRouter, Request, Response

from api.errors import ApiError
from api.receipt_config import ReceiptEndpoint
from api.receipt_formats import EMPTY_TWIML, Callback, Form, Rejected, twilio_verified
from api.receipts import MAX_BODY_BYTES, PROVIDER_NAME, read_limited, request_url
from api.resources import AppResources
from api.schemas import ErrorBody, error_responses
from models.preferences import ANY, Preference
from reach.clock import Clock
from reach.metrics import ApiMetrics

TWILIO = "twilio_sms"


class OptOut(enum.Enum):
    """What an incoming message asks for; the value is the metric label."""

    STOP = "stop"
    START = "start"
    HELP = "help"
    NONE = "none"

    @classmethod
    def of(cls, params: Form) -> OptOut:
        word = (params.get("OptOutType") or [""])[0].strip().lower()
        return next((kind for kind in cls if kind.value == word and kind is not cls.NONE), cls.NONE)


#: what STOP and START write: (allowed, source)
CHANGES: Mapping[OptOut, tuple[bool, str]] = {
    OptOut.STOP: (False, "twilio_stop"),
    OptOut.START: (True, "twilio_start"),
}


def router(endpoints: Mapping[str, ReceiptEndpoint], clock: Clock, metrics: ApiMetrics) -> APIRouter:
    """The inbound route for the ``twilio_sms`` entries among ``endpoints``."""
    twilio = {name: e for name, e in endpoints.items() if e.type == TWILIO}
    routes = APIRouter()
    for name in twilio:  # series from the start, so a rate shows from the first message
        for outcome in ("applied", "unknown_number"):
            metrics.inbound_messages.labels(name, OptOut.STOP.value, outcome)

    @routes.post(
        "/v1/inbound/{provider_name}",
        summary="A provider's incoming-message webhook (Twilio STOP / START)",
        description=(
            "provider_name is a twilio_sms entry of the channels file; the request is checked like its "
            "receipts (X-Twilio-Signature). OptOutType=STOP opts the users whose profile has the "
            "sender's number out of the entry's channel; START opts them in again. Any authentic "
            "request is answered 200 with empty TwiML, a number reach does not know included. "
            "See docs/receipts.md."
        ),
        responses={
            200: {"description": "Accepted (empty TwiML)", "content": {"text/xml": {}}},
            **error_responses(404, 413, 422),
            403: {"model": ErrorBody, "description": "Bad signature; nothing was changed"},
        },
    )
    async def post_inbound(
        app: AppResources, request: Request, provider_name: str = PROVIDER_NAME
    ) -> Response:
        endpoint = twilio.get(provider_name)
        if endpoint is None:
            metrics.inbound_rejected.labels("", "unknown_provider").inc()
            raise ApiError(404, "unknown_provider", f"no twilio_sms provider is named {provider_name!r}")
        params = verified(endpoint, await callback_of(request, endpoint, clock, metrics), metrics)
        kind = OptOut.of(params)
        outcome = await apply(app, endpoint, kind, _single(params, "From"), clock.now_ms())
        metrics.inbound_messages.labels(endpoint.name, kind.value, outcome).inc()
        return Response(EMPTY_TWIML, media_type="text/xml")

    return routes


async def callback_of(
    request: Request, endpoint: ReceiptEndpoint, clock: Clock, metrics: ApiMetrics
) -> Callback:
    body = await read_limited(request, MAX_BODY_BYTES)
    if body is None:
        metrics.inbound_rejected.labels(endpoint.name, "too_large").inc()
        raise ApiError(413, "too_large", f"request body is over {MAX_BODY_BYTES} bytes")
    return Callback(request_url(request), request.headers, request.query_params, body, clock.now_ms())


def verified(endpoint: ReceiptEndpoint, callback: Callback, metrics: ApiMetrics) -> Form:
    try:
        return twilio_verified(endpoint, callback, endpoint.inbound_url)
    except Rejected as exc:
        metrics.inbound_rejected.labels(endpoint.name, exc.reason).inc()
        raise ApiError(exc.status, exc.reason, exc.message) from None


async def apply(app: AppResources, endpoint: ReceiptEndpoint, kind: OptOut, sender: str, now_ms: int) -> str:
    """Record what ``kind`` asks for every user of ``sender``; returns the outcome label."""
    change = CHANGES.get(kind)
    if change is None:
        return "ignored"
    users = await app.phones.users_of(sender)
    if not users:
        return "unknown_number"
    allowed, source = change
    for user_id in users:
        await app.preferences.put(user_id, [Preference(endpoint.channel, ANY, allowed, source)], now_ms)
    return "applied"


def _single(params: Form, name: str) -> str:
    return (params.get(name) or [""])[0].strip()
