"""Site-message endpoints: a user's inbox page, and marking a message read.

The page is one statement on one pooled connection: the page's rows over
``idx_inbox_page`` with the user's ``inbox_unread`` counter alongside, shaped straight
into the JSON answer: no response-model validation and re-serialisation per request.
``InboxPage`` still documents it.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Path, Query, Response

from api.errors import ApiError
from api.resources import Inbox, Tracking
from api.schemas import InboxPage
from models.storage import CursorError, cursor_for
from models.tracking import Kind
from reach.clock import Clock

USER_ID = Path(min_length=1, max_length=128)
MESSAGE_ID = Path(min_length=1, max_length=64)


def router(clock: Clock) -> APIRouter:
    routes = APIRouter()

    @routes.get(
        "/v1/users/{user_id}/inbox", response_model=InboxPage, summary="A user's site messages, newest first"
    )
    async def get_inbox(
        inbox: Inbox,
        user_id: str = USER_ID,
        limit: int = Query(20, ge=1, le=100),
        cursor: str | None = Query(None, description="next_cursor of the previous page"),
    ) -> Response:
        try:
            rows, unread = await inbox.page_with_unread(user_id, limit, cursor)
        except CursorError as exc:
            raise ApiError(400, "bad_cursor", str(exc)) from None
        return Response(page_json(rows, limit, unread), media_type="application/json")

    @routes.post(
        "/v1/users/{user_id}/inbox/{message_id}/read", status_code=204, summary="Mark a site message read"
    )
    async def mark_read(
        inbox: Inbox, tracking: Tracking, user_id: str = USER_ID, message_id: str = MESSAGE_ID
    ) -> Response:
        if not await inbox.mark_read(user_id, message_id, clock.now_ms()):
            raise ApiError(404, "not_found", f"user {user_id!r} has no message {message_id!r}")
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
