"""The hot paths' hand-built answers agree with the models and encodings they replaced."""

from __future__ import annotations

import orjson

from api.events import event_record, parse_events
from api.inbox import page_json
from api.schemas import InboxMessage, InboxPage
from models.storage import InboxItem, decode_cursor


def test_event_record_is_byte_for_byte_the_old_encoding() -> None:
    bodies = [
        {"event_id": "e1", "user_id": "u", "name": "n", "ts": 1764291600000},
        {
            "event_id": "e2",
            "user_id": "ü-42",
            "name": "order_paid",
            "ts": "2026-11-28T09:30:00+08:00",
            "properties": {"amount": 980, "nested": {"a": [1, {"b": None}]}, "s": 'x\n"y'},
            "device": {"platform": "ios", "app_version": "2.3.0"},
        },
    ]
    for event in parse_events(bodies):
        assert event_record(event) == orjson.dumps(event.as_dict())


def row(message_id: str, created_at: int, read_at: int | None) -> tuple[object, ...]:
    # the unread counter, then SHOWN_COLUMNS: message_id, template, title, body, priority, created_at, read_at
    return (5, message_id, "tpl", f"title {message_id}", "body <b>", 7, created_at, read_at)


def test_page_json_is_the_documented_page() -> None:
    rows = [row("m3", 300, None), row("m2", 200, 250), row("m1", 100, None)]
    page = orjson.loads(page_json(rows, 2, unread=5))
    expected_items = [
        InboxMessage.from_item(InboxItem(r[1], "u", "rule", r[2], r[3], r[4], r[5], r[6], r[7])).model_dump()
        for r in rows[:2]
    ]
    assert InboxPage.model_validate(page).model_dump() == page
    assert page["items"] == expected_items and page["unread"] == 5
    assert decode_cursor(page["next_cursor"]) == (200, "m2")


def test_page_json_has_no_cursor_on_the_last_page() -> None:
    assert orjson.loads(page_json([row("m1", 100, None)], 2, unread=1))["next_cursor"] is None
    assert orjson.loads(page_json([], 20, unread=3)) == {"items": [], "unread": 3, "next_cursor": None}
