"""Within /v1 the API only adds: the running code's OpenAPI document against the released one."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import orjson
import pytest

from api.app import create_app
from api.compat import CORRECTIONS, RELEASED, RELEASES, breaking_changes
from reach.settings import Settings

INBOX = "/v1/users/{user_id}/inbox"


@pytest.fixture(scope="module")
def released() -> dict[str, Any]:
    return orjson.loads(RELEASED.read_bytes())


@pytest.fixture(scope="module")
def current() -> dict[str, Any]:
    return create_app(Settings()).openapi()


def test_the_current_api_breaks_nothing_of_the_released_one(
    released: dict[str, Any], current: dict[str, Any]
) -> None:
    assert breaking_changes(released, current) == []


def test_each_release_only_added_to_the_one_before_but_for_its_listed_corrections() -> None:
    corrections = orjson.loads(CORRECTIONS.read_bytes())
    assert len(RELEASES) >= 2
    for old_path, new_path in itertools.pairwise(RELEASES):
        old, new = orjson.loads(old_path.read_bytes()), orjson.loads(new_path.read_bytes())
        listed = corrections.get(new["info"]["version"], {}).get("changes", [])
        assert sorted(breaking_changes(old, new)) == sorted(listed), new_path.name


def test_the_newest_release_is_the_running_api_version(current: dict[str, Any]) -> None:
    assert RELEASED.name == f"v1-{current['info']['version']}.json"


def changed(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)


def test_a_removed_response_field_is_found(released: dict[str, Any]) -> None:
    new = changed(released)
    del new["components"]["schemas"]["InboxMessage"]["properties"]["title"]
    assert f"GET {INBOX} 200.items[]: field 'title' removed" in breaking_changes(released, new)


def test_a_retyped_response_field_is_found(released: dict[str, Any]) -> None:
    new = changed(released)
    new["components"]["schemas"]["InboxPage"]["properties"]["unread"] = {"type": "string"}
    assert breaking_changes(released, new) == [f"GET {INBOX} 200.unread: type changed from integer to string"]


def test_removed_paths_methods_statuses_and_parameters_are_found(released: dict[str, Any]) -> None:
    new = changed(released)
    del new["paths"]["/v1/events"]
    inbox = new["paths"][INBOX]["get"]
    inbox["parameters"] = [p for p in inbox["parameters"] if p["name"] != "cursor"]
    del inbox["responses"]["422"]
    problems = breaking_changes(released, new)
    assert "/v1/events: removed" in problems
    assert f"GET {INBOX}: query parameter 'cursor' removed" in problems
    assert f"GET {INBOX}: response 422 removed" in problems


def test_a_newly_required_parameter_is_found(released: dict[str, Any]) -> None:
    new = changed(released)
    inbox = new["paths"][INBOX]["get"]
    inbox["parameters"].append(
        {"in": "query", "name": "tenant", "required": True, "schema": {"type": "string"}}
    )
    assert breaking_changes(released, new) == [f"GET {INBOX}: query parameter 'tenant' is now required"]


def test_additions_break_nothing(released: dict[str, Any]) -> None:
    new = changed(released)
    new["components"]["schemas"]["InboxMessage"]["properties"]["subtitle"] = {"type": "string"}
    new["paths"]["/v1/new"] = {"get": {"responses": {"200": {"description": "ok"}}}}
    new["paths"][INBOX]["get"]["responses"]["426"] = {"description": "upgrade"}
    assert breaking_changes(released, new) == []
