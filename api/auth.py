"""Who is calling, and may they: API keys, end-user tokens, scopes and rate limits.

Every route but the receipts (checked by their providers' signatures), the unsubscribe
links (their signed token is the credential), liveness,
readiness, metrics and the API's own documentation takes one of the dependencies below.
A credential is ``Authorization: Bearer <credential>``:

- an API key ``rk_<key id>_<secret>`` of a calling system, with scopes
  (:class:`~models.access.Scope`; ``admin`` holds them all) and optionally the event names
  it may emit. Keys are checked against an in-process snapshot of the ``api_keys`` table
  (:class:`KeyCache`), so a request reads no database: a revoked key stops working within
  ``REACH_API_KEY_CACHE_SECONDS``.
- an end user's JWT (:mod:`api.user_tokens`), which reaches only that user's inbox and
  pop-ups.

Wiring a route is one parameter: ``caller: TasksWriter`` (or ``dependencies=[require(...)]``
on a router). ``ForUser`` is the user-path variant: it reads ``{user_id}`` and lets in a key
with ``inbox:read`` or that user's own token; ``ForUserPreferences`` the same with
``preferences:write``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.rate_limit import RateLimiter
from api.schemas import USER_ID
from api.user_tokens import TokenError, UserTokens
from models.access import ApiKey, KeyStore, Scope, parse_token
from reach.clock import Clock
from reach.errors import DEPENDENCY_ERRORS
from reach.metrics import ApiMetrics
from reach.settings import Settings

log = structlog.get_logger("reach.api.auth")

# An unknown key id refreshes the snapshot at most this often, so a new key works within
# about a second while a flood of made-up keys costs the database nothing.
MISS_REFRESH_MS = 1000
# A refresh waits at most this for MariaDB: requests queue behind it, so a hung database
# must turn into "serve the snapshot" quickly, not into hung requests.
REFRESH_TIMEOUT_S = 2.0
CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a calling system's key, or an end user."""

    key: ApiKey | None
    user_id: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"key:{self.key.key_id}" if self.key is not None else "user"

    def allows(self, scope: Scope) -> bool:
        return self.key is not None and self.key.allows(scope)

    def refused_events(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """``{"index", "name"}`` of each event name this caller may not emit."""
        allowed = self.key.events if self.key is not None else frozenset()
        if allowed is None:
            return []
        return [{"index": i, "name": n} for i, n in enumerate(names) if n not in allowed]


@dataclasses.dataclass(frozen=True, slots=True)
class UserAccess:
    """A request for one user's data: whose (the path's ``user_id``), and who asks."""

    user_id: str
    caller: Principal


class KeyCache:
    """The active keys, read whole from MariaDB at most every ``ttl_ms`` (one concurrent
    read per process). While MariaDB is down the snapshot keeps serving until it is
    ``max_stale_ms`` old; after that requests get ``503``, never a revoked key let in."""

    def __init__(self, store: KeyStore, clock: Clock, ttl_ms: int, max_stale_ms: int) -> None:
        self.store, self.clock = store, clock
        self.ttl_ms, self.max_stale_ms = ttl_ms, max(ttl_ms, max_stale_ms)
        self._keys: dict[str, ApiKey] = {}
        self._loaded_at: int | None = None
        self._lock = asyncio.Lock()

    async def get(self, key_id: str) -> ApiKey | None:
        now = self.clock.now_ms()
        if self._age(now) >= self.ttl_ms:
            await self._refresh(now)
        key = self._keys.get(key_id)
        if key is None and self._age(now) >= MISS_REFRESH_MS:
            await self._refresh(now)
            key = self._keys.get(key_id)
        return key

    def _age(self, now: int) -> int:
        return now - self._loaded_at if self._loaded_at is not None else 1 << 62

    async def _refresh(self, now: int) -> None:
        async with self._lock:
            if self._loaded_at is not None and self._loaded_at >= now:
                return  # another request refreshed it while this one waited
            try:
                async with asyncio.timeout(REFRESH_TIMEOUT_S):
                    keys = await self.store.active()
            except DEPENDENCY_ERRORS as exc:  # TimeoutError among them
                if self._age(now) >= self.max_stale_ms:
                    raise
                log.warning("auth.key_refresh_failed", error=type(exc).__name__)
                return
            self._keys, self._loaded_at = keys, now


class Access:
    """Authentication, scope checks and rate limits of the running API."""

    def __init__(
        self,
        keys: KeyCache,
        tokens: UserTokens,
        limiter: RateLimiter,
        settings: Settings,
        metrics: ApiMetrics,
    ) -> None:
        self.keys, self.tokens, self.limiter, self.metrics = keys, tokens, limiter, metrics
        self.clock = keys.clock
        self.key_limit, self.user_limit = settings.rate_limit_per_key, settings.rate_limit_per_user

    async def authenticate(self, credential: HTTPAuthorizationCredentials | None) -> Principal:
        """The caller of ``credential``; raises ``ApiError`` 401 when there is none or it is refused."""
        if credential is None:
            raise self.unauthenticated("missing", "send Authorization: Bearer <API key or user token>")
        token = credential.credentials
        parsed = parse_token(token)
        if parsed is not None:
            return Principal(await self._key(*parsed))
        return Principal(None, self._user(token))

    async def _key(self, key_id: str, secret: str) -> ApiKey:
        key = await self.keys.get(key_id)
        if key is None or not key.matches(secret, self.clock.now_ms()):
            raise self.unauthenticated("unknown_key", "the API key is unknown, revoked or wrong")
        return key

    def _user(self, token: str) -> str:
        if not self.tokens.configured:
            raise self.unauthenticated("no_user_tokens", "this API is configured for no user tokens")
        try:
            return self.tokens.verify(token)
        except TokenError as exc:
            raise self.unauthenticated(exc.reason, exc.message) from None

    def require(self, caller: Principal, scope: Scope) -> None:
        if not caller.allows(scope):
            who = "this key" if caller.key is not None else "a user token"
            raise self.forbidden("missing_scope", f"{who} does not hold the scope {scope.value}")

    def require_user(self, caller: Principal, user_id: str, scope: Scope = Scope.INBOX_READ) -> None:
        """A user's own token, or a key holding ``scope`` (any user's data)."""
        if caller.key is None and caller.user_id != user_id:
            raise self.forbidden("other_user", "a user token reaches only its own user's data")
        if caller.key is not None:
            self.require(caller, scope)

    async def limit(self, caller: Principal) -> None:
        """Count the request against its caller's rate limit; ``ApiError`` 429 when over."""
        if caller.key is not None:
            limit = caller.key.rate_limit if caller.key.rate_limit is not None else self.key_limit
            await self.limiter.check("key", caller.key.key_id, limit)
        elif caller.user_id is not None:
            await self.limiter.check("user", caller.user_id, self.user_limit)

    def unauthenticated(self, reason: str, message: str) -> ApiError:
        self.metrics.auth_refused.labels(reason).inc()
        return ApiError(401, "unauthenticated", message, headers=CHALLENGE)

    def forbidden(self, reason: str, message: str, details: Any = None) -> ApiError:
        self.metrics.auth_refused.labels(reason).inc()
        return ApiError(403, "forbidden", message, details)


bearer = HTTPBearer(auto_error=False, description="An API key (rk_...) or an end user's JWT")
Credential = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def access_of(request: Request) -> Access:
    """The running app's :class:`Access`; only valid while its lifespan runs."""
    built: Access = request.app.state.resources.access
    return built


def require(scope: Scope) -> Any:
    """The dependency of a route that needs ``scope``; it yields the :class:`Principal`."""

    async def caller_with_scope(request: Request, credential: Credential) -> Principal:
        access = await access_of(request)
        caller = await access.authenticate(credential)
        access.require(caller, scope)
        await access.limit(caller)
        return caller

    return Depends(caller_with_scope)


def for_user(scope: Scope) -> Any:
    """The dependency of a ``{user_id}`` route: that user's token, or a key with ``scope``."""

    async def user_access(request: Request, credential: Credential, user_id: str = USER_ID) -> UserAccess:
        access = await access_of(request)
        caller = await access.authenticate(credential)
        access.require_user(caller, user_id, scope)
        await access.limit(caller)
        return UserAccess(user_id, caller)

    return Depends(user_access)


EventsWriter = Annotated[Principal, require(Scope.EVENTS_WRITE)]
StatsReader = Annotated[Principal, require(Scope.STATS_READ)]
TasksWriter = Annotated[Principal, require(Scope.TASKS_WRITE)]
AdminCaller = Annotated[Principal, require(Scope.ADMIN)]
ForUser = Annotated[UserAccess, for_user(Scope.INBOX_READ)]
ForUserPreferences = Annotated[UserAccess, for_user(Scope.PREFERENCES_WRITE)]
