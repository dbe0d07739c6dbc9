"""Pop-up endpoints: what the app should show now, and dismissing one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response

from api.auth import ForUser
from api.errors import ApiError
from api.resources import Popups
from api.schemas import AUTHENTICATED, MESSAGE_ID, PopupList, PopupMessage, error_responses
from api.upgrade import PLATFORM_HEADER, VERSION_HEADER
from models.popups import upgraded
from reach.clock import Clock


def router(clock: Clock) -> APIRouter:
    """``GET /v1/users/{user_id}/popups`` and ``POST .../popups/{message_id}/dismiss``; reached
    with a key holding ``inbox:read`` (any user) or the user's own token."""
    routes = APIRouter(responses=error_responses(*AUTHENTICATED))

    @routes.get(
        "/v1/users/{user_id}/popups",
        response_model=PopupList,
        summary="The pop-ups to show now, highest priority first",
        description=(
            "Pop-ups whose display window contains the current time and that are not dismissed, "
            "highest priority first, then the most recent window start. A show-once pop-up is "
            "returned by one request only: that request marks it shown. A pop-up of `type` "
            "`upgrade` asks the user to upgrade the app (`upgrade`: platform, minimum_version, "
            "upgrade_url); an app that sends X-App-Platform and X-App-Version at or above its "
            "minimum does not get it."
        ),
    )
    async def get_popups(
        request: Request, popups: Popups, access: ForUser, limit: int = Query(10, ge=1, le=50)
    ) -> dict[str, Any]:
        hidden = upgraded(request.headers.get(PLATFORM_HEADER), request.headers.get(VERSION_HEADER))
        items = await popups.active(access.user_id, clock.now_ms(), limit, hidden)
        return {"items": [PopupMessage.from_item(i).model_dump() for i in items]}

    @routes.post(
        "/v1/users/{user_id}/popups/{message_id}/dismiss",
        status_code=204,
        summary="Dismiss a pop-up: it is never shown again",
        responses=error_responses(404),
    )
    async def dismiss_popup(popups: Popups, access: ForUser, message_id: str = MESSAGE_ID) -> Response:
        if not await popups.dismiss(access.user_id, message_id, clock.now_ms()):
            raise ApiError(404, "not_found", f"the user has no pop-up {message_id!r}")
        return Response(status_code=204)

    return routes
