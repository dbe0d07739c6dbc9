"""Site-message endpoints: a user's inbox page, and marking a message read.

The page is one statement on one pooled connection: the page's rows over
``idx_inbox_page`` with the user's ``inbox_unread`` counter alongside, shaped straight
into the JSON answer: no response-model validation and re-serialisation per request.
``InboxPage`` still documents it.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Query, Response

from api.auth import ForUser
from api.errors import ApiError
from api.resources import Inbox, Tracking
from api.schemas import AUTHENTICATED, MESSAGE_ID, InboxPage, error_responses
from models.storage import CursorError, cursor_for
from models.tracking import Kind
from reach.clock import Clock


def router(clock: Clock) -> APIRouter:
    """Reached with a key holding ``inbox:read`` (any user) or the user's own token."""
    routes = APIRouter(responses=error_responses(*AUTHENTICATED))

    @routes.get(
        "/v1/users/{user_id}/inbox",
        response_model=InboxPage,
        summary="A user's site messages, newest first",
        responses=error_responses(400),
    )
    async def get_inbox(
        inbox: Inbox,
        access: ForUser,
        limit: int = Query(20, ge=1, le=100),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> Response:
        try:
            rows, unread = await inbox.page_with_unread(access.user_id, limit, cursor)
        except CursorError as exc:
            raise ApiError(400, "bad_cursor", str(exc)) from None
        return Response(page_json(rows, limit, unread), media_type="application/json")

    @routes.post(
        "/v1/users/{user_id}/inbox/{message_id}/read",
        status_code=204,
        summary="Mark a site message read",
        responses=error_responses(404),
    )
    async def mark_read(
        inbox: Inbox, access: ForUser, tracking: Tracking, message_id: str = MESSAGE_ID
    ) -> Response:
        if not await inbox.mark_read(access.user_id, message_id, clock.now_ms()):
            raise ApiError(404, "not_found", f"the user has no message {message_id!r}")
        tracking.emit(Kind.OPENED, [message_id])  # a site message read is opened (counted once)
        return Response(status_code=204)

    return routes


def page_json(rows: list[tuple[Any, ...]], limit: int, unread: int) -> bytes:
    """The :class:`~api.schemas.InboxPage` of ``rows`` (the unread counter, then
    ``SHOWN_COLUMNS``; up to ``limit + 1`` rows)."""
    shown = rows[:limit]
    more = len(rows) > limit and shown
    return orjson.dumps(
        {
            "items": [
                {
                    "message_id": message_id,
                    "title": title,
                    "body": body,
                    "template": template,
                    "priority": priority,
                    "created_at": created_at,
                    "read": read_at is not None,
                }
                for _unread, message_id, template, title, body, priority, created_at, read_at in shown
            ],
            "unread": unread,
            "next_cursor": cursor_for(shown[-1][6], shown[-1][1]) if more else None,
        }
    )
