"""Preferences and unsubscribing: what a user accepts, per channel and category.

``GET``/``PUT /v1/users/{user_id}/preferences`` read and change the user's rows (``*``
for every channel or every category; the most specific row wins). ``/v1/unsubscribe/
{token}`` is where every message's signed link points (RFC 8058): ``POST`` is the
one-click unsubscribe a mail client sends (``List-Unsubscribe=One-Click``), ``GET`` a
confirmation page whose button posts, because mail scanners follow links and must not
unsubscribe anyone. The preferences take the user's own token or a key with
``preferences:write``; the signed token is the only credential of the unsubscribe routes.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Depends, Path, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from api.auth import ForUserPreferences
from api.errors import ApiError
from api.events import require_json
from api.resources import AppResources, Prefs
from api.schemas import AUTHENTICATED, error_responses
from models import audit
from models.preferences import ANY, Preference
from models.unsubscribe import TokenError, TokenSigner, Unsubscribe
from reach.clock import Clock
from reach.settings import Settings

TOKEN = Path(min_length=1, max_length=1024)
CHANNEL_PATTERN = r"^(\*|[a-z0-9][a-z0-9_-]{0,31})$"


class PreferenceIn(BaseModel):
    channel: str = Field(pattern=CHANNEL_PATTERN, description="a channel, or * for every channel")
    category: str = Field(min_length=1, max_length=32, description="a category, or * for every one")
    allowed: bool


class PreferencesIn(BaseModel):
    preferences: list[PreferenceIn] = Field(max_length=200)


def router(settings: Settings, clock: Clock) -> APIRouter:
    routes = APIRouter()
    signer = TokenSigner.from_settings(settings)
    known = (*settings.category_names, ANY)

    @routes.get(
        "/v1/users/{user_id}/preferences",
        summary="A user's channel and category choices",
        responses=error_responses(*AUTHENTICATED),
    )
    async def get_preferences(prefs: Prefs, access: ForUserPreferences) -> dict[str, Any]:
        return shown(access.user_id, await prefs.of_user(access.user_id))

    @routes.put(
        "/v1/users/{user_id}/preferences",
        summary="Change some of a user's choices",
        responses=error_responses(400, 415, *AUTHENTICATED),
        dependencies=[Depends(require_json)],
    )
    async def put_preferences(
        prefs: Prefs, body: PreferencesIn, access: ForUserPreferences, app: AppResources
    ) -> dict[str, Any]:
        changes = [
            Preference(p.channel, checked(p.category, known), p.allowed, "api") for p in body.preferences
        ]
        now = clock.now_ms()
        if access.caller.key is not None:  # an operator's tool changed a user's choices: audited
            detail = {"changes": [[c.channel, c.category, c.allowed] for c in changes]}
            await audit.record(app.pool, access.caller.actor, "preferences.put", access.user_id, now, detail)
        return shown(access.user_id, await prefs.put(access.user_id, changes, now))

    @routes.get("/v1/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe page")
    async def confirm_page(token: str = TOKEN) -> Response:
        request = verified(signer, token, clock)
        if request is None:
            return HTMLResponse(page(INVALID), status_code=400)
        return HTMLResponse(page(CONFIRM.format(what=what(request))))

    @routes.post("/v1/unsubscribe/{token}", response_class=HTMLResponse, summary="One-click unsubscribe")
    async def unsubscribe(prefs: Prefs, token: str = TOKEN) -> Response:
        request = verified(signer, token, clock)
        if request is None:
            return HTMLResponse(page(INVALID), status_code=400)
        change = Preference(request.channel, request.category, False, "unsubscribe")
        await prefs.put(request.user_id, [change], clock.now_ms())
        return HTMLResponse(page(DONE.format(what=what(request))))

    return routes


def checked(category: str, known: tuple[str, ...]) -> str:
    if category not in known:
        raise ApiError(422, "unknown_category", f"category {category!r} is not one of {', '.join(known)}")
    return category


def shown(user_id: str, rows: list[Preference]) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "preferences": [
            {"channel": p.channel, "category": p.category, "allowed": p.allowed, "source": p.source,
             "updated_at": p.updated_at}
            for p in rows
        ],
    }  # fmt: skip


def verified(signer: TokenSigner, token: str, clock: Clock) -> Unsubscribe | None:
    try:
        return signer.verify(token, clock.now_ms())
    except TokenError:
        return None


def what(request: Unsubscribe) -> str:
    return html.escape(f"{request.category} messages by {request.channel}")


def page(body: str) -> str:
    head = '<head><meta charset="utf-8"><title>Unsubscribe</title></head>'
    return f"<!doctype html><html>{head}<body>{body}</body></html>"


BUTTON = '<form method="post"><button type="submit">Unsubscribe</button></form>'
CONFIRM = "<h1>Unsubscribe</h1><p>Stop receiving {what}?</p>" + BUTTON
DONE = "<h1>You are unsubscribed</h1><p>You will no longer receive {what}.</p>"
INVALID = (
    "<h1>This link is not valid</h1><p>It may be incomplete or too old. Use the link in a recent message.</p>"
)
