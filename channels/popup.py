"""In-app pop-ups: stored in MariaDB/TiDB, fetched by the app through the HTTP API.

Sending stores one row per message in ``popups`` (see :mod:`models.popups`);
the app asks ``GET /v1/users/{user_id}/popups`` what to show. A replayed
message id is a no-op: its window, ``shown_at`` and ``dismissed_at`` stay.

The display window
    ``show_from`` is when the message became due (``max(created_ts,
    not_before)``) and ``show_until`` is ``show_from + display_seconds``. The
    event can set either end with the properties ``popup_from`` /
    ``popup_until``: epoch milliseconds or an RFC 3339 timestamp with an
    offset. A window longer than ``max_display_seconds`` is cut to it.

Show once
    The provider option ``show_once`` (default true) applies unless the event
    sets the boolean property ``popup_show_once``.

=========================================  =================================
what happened                              outcome
=========================================  =================================
stored, or already stored (replay)         SENT, provider id = message id
``popup_from``, ``popup_until`` or         PERMANENT ``bad_popup_property``
``popup_show_once`` unreadable
the window ended before the message was    PERMANENT ``popup_expired``
due (e.g. a retry came too late)
the window ends before it starts           PERMANENT ``bad_popup_window``
title or body longer than the table holds  PERMANENT ``content_too_long``
database unreachable                       RETRY ``db_unavailable`` after 1 s
=========================================  =================================

A message rendered from a ``kind: upgrade`` template is stored as type ``upgrade`` with
its ``platform``, ``minimum_version`` and ``upgrade_url``; any other as type ``message``.

Options: ``display_seconds`` (default 7 days), ``max_display_seconds``
(default 90 days), ``show_once`` (default true: only the first read that
returns a pop-up shows it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
import pymysql

from channels.base import Delivery, Outcome, Provider, StartHook, no_start_hook
from channels.options import OptionReader
from models.events import EPOCH, MAX_TS_MS, MIN_TS_MS
from models.popups import MESSAGE, UPGRADE, PopupItem, PopupStore

DAY = 86_400
DEFAULT_DISPLAY_SECONDS, DEFAULT_MAX_DISPLAY_SECONDS = 7 * DAY, 90 * DAY
_OPTION_KEYS = frozenset({"display_seconds", "max_display_seconds", "show_once"})
#: event properties that override the window and the show-once option
FROM_PROPERTY, UNTIL_PROPERTY, ONCE_PROPERTY = "popup_from", "popup_until", "popup_show_once"
#: column sizes in models/schema.sql: VARCHAR(512) title; TEXT body (65,535 bytes, 4 per character)
MAX_TITLE_CHARS, MAX_BODY_CHARS = 512, 16_000
_DB_DOWN = (pymysql.err.OperationalError, pymysql.err.InterfaceError)


@dataclasses.dataclass(frozen=True, slots=True)
class PopupOptions:
    """The ``options`` of a ``popup`` provider entry, validated."""

    display_seconds: int = DEFAULT_DISPLAY_SECONDS
    max_display_seconds: int = DEFAULT_MAX_DISPLAY_SECONDS
    show_once: bool = True

    @classmethod
    def parse(cls, options: Mapping[str, Any], provider: str = "popup") -> PopupOptions:
        """Validate raw options; raises ``ValueError`` naming the provider and the option."""
        reader = OptionReader(options, provider)
        reader.reject_unknown(_OPTION_KEYS)
        longest = reader.integer("max_display_seconds", DEFAULT_MAX_DISPLAY_SECONDS, 1, 3650 * DAY)
        return cls(
            display_seconds=reader.integer(
                "display_seconds", min(DEFAULT_DISPLAY_SECONDS, longest), 1, longest
            ),
            max_display_seconds=longest,
            show_once=reader.flag("show_once", True),
        )


class PopupError(ValueError):
    """The message cannot be shown as is; ``code`` is the outcome code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class PopupProvider(Provider):
    """Stores each message in ``popups``; the API serves them. Needs the MySQL pool."""

    type_name: ClassVar[str] = "popup"
    idempotent: ClassVar[bool] = True  # stored by message id: a repeat is a no-op
    max_content_bytes: ClassVar[int] = 60_000

    async def setup(self) -> None:
        self.options = PopupOptions.parse(self.config.options, self.name)
        if self.context.mysql_pool is None:
            raise ValueError(f"provider {self.name!r}: pop-ups need the MySQL pool")
        self.store = PopupStore(self.context.mysql_pool)

    async def send_batch(
        self, deliveries: Sequence[Delivery], started: StartHook = no_start_hook
    ) -> list[Outcome]:
        prepared = [popup_item(d, self.options) for d in deliveries]
        items = [p for p in prepared if isinstance(p, PopupItem)]
        await started([d for d, p in zip(deliveries, prepared, strict=True) if isinstance(p, PopupItem)])
        try:
            await self.store.insert(items)
        except _DB_DOWN as exc:
            # The database is down or overloaded: the agent retries these later.
            retry = Outcome.retry("db_unavailable", f"pop-up store unavailable ({exc.args[0]})", 1.0)
            return [retry if isinstance(p, PopupItem) else p for p in prepared]
        return [Outcome.sent(p.message_id) if isinstance(p, PopupItem) else p for p in prepared]


def popup_item(delivery: Delivery, options: PopupOptions) -> PopupItem | Outcome:
    """The row to store for ``delivery``, or the permanent outcome saying why there is none."""
    message, content = delivery.message, delivery.content
    if len(content.title) > MAX_TITLE_CHARS or len(content.text) > MAX_BODY_CHARS:
        return Outcome.permanent(
            "content_too_long", f"a pop-up holds {MAX_TITLE_CHARS} title and {MAX_BODY_CHARS} body characters"
        )
    properties = _properties(message.variables)
    try:
        show_from, show_until = display_window(
            max(message.created_ts, message.not_before), properties, options
        )
        show_once = _show_once(properties, options.show_once)
    except PopupError as exc:
        return Outcome.permanent(exc.code, exc.detail)
    return PopupItem(
        message_id=message.message_id,
        user_id=message.user_id,
        rule_id=message.rule_id,
        template=message.template,
        title=content.title,
        body=content.text,
        priority=message.priority,
        show_from=show_from,
        show_until=show_until,
        show_once=show_once,
        created_at=message.created_ts,
        type=UPGRADE if content.kind == UPGRADE else MESSAGE,
        details=orjson.dumps(dict(content.details)).decode() if content.details else "",
    )


def display_window(due_ms: int, properties: Mapping[str, Any], options: PopupOptions) -> tuple[int, int]:
    """``(show_from, show_until)`` in epoch ms for a message due at ``due_ms``.

    ``properties`` are the event's. Raises :class:`PopupError` when an
    override is unreadable, the window ended before ``due_ms`` (``popup_expired``)
    or it is empty (``bad_popup_window``).
    """
    show_from = _instant(properties, FROM_PROPERTY)
    show_from = due_ms if show_from is None else show_from
    show_until = _instant(properties, UNTIL_PROPERTY)
    show_until = show_from + options.display_seconds * 1000 if show_until is None else show_until
    show_until = min(show_until, show_from + options.max_display_seconds * 1000)
    if show_until <= due_ms:
        raise PopupError("popup_expired", "the display window ended before the message was due")
    if show_until <= show_from:
        raise PopupError("bad_popup_window", f"'{UNTIL_PROPERTY}' is not after '{FROM_PROPERTY}'")
    return show_from, show_until


def _properties(variables: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = variables.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def _show_once(properties: Mapping[str, Any], default: bool) -> bool:
    value = properties.get(ONCE_PROPERTY, default)
    if not isinstance(value, bool):
        raise PopupError("bad_popup_property", f"'{ONCE_PROPERTY}' must be true or false")
    return value


def _instant(properties: Mapping[str, Any], key: str) -> int | None:
    """An event property as epoch ms: an integer of milliseconds or an RFC 3339 string."""
    value = properties.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str):
        ms = _rfc3339_ms(key, value)
    else:
        raise PopupError("bad_popup_property", f"'{key}' must be epoch milliseconds or RFC 3339")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise PopupError("bad_popup_property", f"'{key}' is out of range (epoch milliseconds, 2000..2100)")
    return ms


def _rfc3339_ms(key: str, value: str) -> int:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise PopupError("bad_popup_property", f"'{key}' is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise PopupError("bad_popup_property", f"'{key}' has no time zone offset")
    return (parsed - EPOCH) // dt.timedelta(milliseconds=1)
