"""Engagement tracking: the open pixel, tracked links, pop-up displays, and the emitter
that puts their events (and inbox reads and delivery receipts) on the tracking topic.

- ``GET /v1/t/o/{token}.gif``: the e-mail open pixel, a 1x1 transparent GIF; the message
  is ``opened``.
- ``GET /v1/t/c/{token}``: a tracked link; the message is ``clicked`` and the answer is a
  ``302`` to the link's target. The target is inside the signed token
  (:mod:`models.tracking_links`): a token that does not verify is ``404`` and never a
  redirect, so the route cannot be used to send anyone to a URL reach did not write.
- ``POST /v1/users/{user_id}/popups/{message_id}/displayed``: the app showed the pop-up
  on screen; the message is ``displayed``.

The pixel and link routes take no credential: the signed token is one, and mail clients
and browsers send nothing else. The pop-up route is the app's, with the user's own token
(or a key with ``inbox:read``), like the other pop-up routes.

No answer waits for Kafka: the events are sent in the background
(:class:`api.tracker.Tracker`), and one Kafka cannot take is counted as dropped, so a
broker outage costs engagement counts, never a user's click.
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Response
from fastapi.responses import RedirectResponse

from api.auth import ForUser
from api.errors import ApiError
from api.resources import Popups, Tracking
from api.schemas import AUTHENTICATED, MESSAGE_ID, error_responses
from models.tracking import Kind
from models.tracking_links import CLICK, OPEN, Link, LinkError, LinkSigner
from reach.metrics import ApiMetrics

# The classic 43-byte transparent 1x1 GIF.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Every open and click reaches the API (a cached pixel would hide the opens of a forwarded
# e-mail); the token is never passed on to the target site as a Referer.
NO_STORE = {"Cache-Control": "no-store, private", "Pragma": "no-cache"}
NO_REFERRER = {**NO_STORE, "Referrer-Policy": "no-referrer"}
TOKEN = Path(min_length=1, max_length=4096)


def links_router(signer: LinkSigner, metrics: ApiMetrics) -> APIRouter:
    """The open pixel and tracked links: no credential, the signed token is one."""
    routes = APIRouter()

    def verified(token: str, kind: str, counted_as: Kind) -> Link:
        try:
            link: Link | None = signer.verify(token)
        except LinkError:
            link = None
        if link is None or link.kind != kind:
            metrics.tracking_events.labels(counted_as, "refused").inc()
            raise ApiError(404, "not_found", "this link is not valid")
        return link

    @routes.get(
        "/v1/t/o/{token}.gif",
        summary="E-mail open pixel",
        description=(
            "A 1x1 transparent GIF; records the message opened. 404 for a token that does not verify."
        ),
        responses={200: {"content": {"image/gif": {}}}, **error_responses(404)},
        response_class=Response,
    )
    async def open_pixel(tracking: Tracking, token: str = TOKEN) -> Response:
        link = verified(token, OPEN, Kind.OPENED)
        tracking.emit(Kind.OPENED, [link.message_id])
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_STORE)

    @routes.get(
        "/v1/t/c/{token}",
        summary="Tracked link: records the click and redirects to the link's target",
        description=(
            "302 to the target signed into the token. A token that does not verify (altered, "
            "unsigned, or naming another URL) is 404, never a redirect."
        ),
        status_code=302,
        responses={302: {"description": "Redirect to the link's target"}, **error_responses(404)},
        response_class=RedirectResponse,
    )
    async def click(tracking: Tracking, token: str = TOKEN) -> Response:
        link = verified(token, CLICK, Kind.CLICKED)
        tracking.emit(Kind.CLICKED, [link.message_id])
        return RedirectResponse(link.url, status_code=302, headers=NO_REFERRER)

    return routes


def app_router() -> APIRouter:
    """What the app reports: a pop-up it showed on screen. Reached with a key holding
    ``inbox:read`` (any user) or the user's own token, like the other pop-up routes."""
    routes = APIRouter(responses=error_responses(*AUTHENTICATED))

    @routes.post(
        "/v1/users/{user_id}/popups/{message_id}/displayed",
        status_code=204,
        summary="Report a pop-up shown on screen (engagement tracking)",
        description="Repeating it is harmless: a pop-up counts as displayed once.",
        responses=error_responses(404),
    )
    async def popup_displayed(
        popups: Popups, access: ForUser, tracking: Tracking, message_id: str = MESSAGE_ID
    ) -> Response:
        if not await popups.owns(access.user_id, message_id):
            raise ApiError(404, "not_found", f"the user has no pop-up {message_id!r}")
        tracking.emit(Kind.DISPLAYED, [message_id])
        return Response(status_code=204)

    return routes
