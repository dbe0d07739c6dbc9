"""Within ``/v1`` the API only ever adds: this finds what a new OpenAPI document breaks.

Compared with the document of the previous release (``api/openapi/``), a new one breaks a
client when it:

- drops a path or a method, a documented status code, or a parameter;
- drops a field of a response body, or changes a field's type;
- makes a request field or parameter required that was optional or absent.

New paths, methods, status codes, optional parameters and response fields are fine.
``python -m api.compat OLD.json`` prints what the running code's document breaks
against ``OLD.json`` (default: the newest release) and exits 1 when it breaks anything;
``python -m api.compat --write`` stores the running code's document as a release.

Each release's document is kept (``api/openapi/v1-<version>.json``). Where a release
corrected a document that described something the API never did (so no client could
rely on it), ``api/openapi/corrections.json`` lists exactly those lines with the reason;
every other difference between consecutive releases must be an addition.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

Doc = Mapping[str, Any]
RELEASES_DIR = Path(__file__).resolve().parent / "openapi"
CORRECTIONS = RELEASES_DIR / "corrections.json"


def release_version(path: Path) -> tuple[int, ...]:
    """``(0, 2, 0)`` of ``v1-0.2.0.json``."""
    return tuple(int(part) for part in path.stem.removeprefix("v1-").split("."))


RELEASES = sorted(RELEASES_DIR.glob("v1-*.json"), key=release_version)
RELEASED = RELEASES[-1]
METHODS = ("get", "put", "post", "delete", "patch")
MAX_DEPTH = 12


def breaking_changes(old: Doc, new: Doc) -> list[str]:
    """Every way ``new`` breaks a client written against ``old``, one line each."""
    problems: list[str] = []
    for path, old_item in old.get("paths", {}).items():
        new_item = new.get("paths", {}).get(path)
        if new_item is None:
            problems.append(f"{path}: removed")
            continue
        for method in METHODS:
            if method in old_item:
                where = f"{method.upper()} {path}"
                problems += _operation(where, old_item[method], new_item.get(method), old, new)
    return problems


def _operation(where: str, old_op: Doc, new_op: Doc | None, old: Doc, new: Doc) -> list[str]:
    if new_op is None:
        return [f"{where}: removed"]
    problems = list(_parameters(where, old_op, new_op))
    for status, old_response in old_op.get("responses", {}).items():
        new_response = new_op.get("responses", {}).get(status)
        if new_response is None:
            problems.append(f"{where}: response {status} removed")
            continue
        old_schema, new_schema = _json_schema(old_response), _json_schema(new_response)
        if old_schema is not None:
            here = f"{where} {status}"
            problems += _response_schema(here, old_schema, new_schema or {}, old, new, 0)
    problems += _request_body(where, old_op, new_op, old, new)
    return problems


def _parameters(where: str, old_op: Doc, new_op: Doc) -> Iterator[str]:
    old_params = {(p["in"], p["name"]): p for p in old_op.get("parameters", [])}
    new_params = {(p["in"], p["name"]): p for p in new_op.get("parameters", [])}
    for key, param in old_params.items():
        if key not in new_params:
            yield f"{where}: {key[0]} parameter {key[1]!r} removed"
        elif _type_of(param.get("schema", {})) != _type_of(new_params[key].get("schema", {})):
            yield f"{where}: {key[0]} parameter {key[1]!r} changed type"
    for key, param in new_params.items():
        if param.get("required") and not old_params.get(key, {}).get("required"):
            yield f"{where}: {key[0]} parameter {key[1]!r} is now required"


def _request_body(where: str, old_op: Doc, new_op: Doc, old: Doc, new: Doc) -> list[str]:
    new_schema = _json_schema(new_op.get("requestBody", {}))
    if new_schema is None:
        return []
    old_schema = _resolve(_json_schema(old_op.get("requestBody", {})) or {}, old)
    required_before = set(old_schema.get("required", []))
    resolved = _resolve(new_schema, new)
    return [
        f"{where} request: field {name!r} is now required"
        for name in resolved.get("required", [])
        if name not in required_before
    ]


def _response_schema(where: str, old_s: Doc, new_s: Doc, old: Doc, new: Doc, depth: int) -> list[str]:
    old_s, new_s = _resolve(old_s, old), _resolve(new_s, new)
    if depth > MAX_DEPTH:
        return []
    if _type_of(old_s) != _type_of(new_s):
        return [f"{where}: type changed from {_type_of(old_s)} to {_type_of(new_s)}"]
    problems: list[str] = []
    new_props = new_s.get("properties", {})
    for name, old_prop in old_s.get("properties", {}).items():
        if name not in new_props:
            problems.append(f"{where}: field {name!r} removed")
        else:
            problems += _response_schema(f"{where}.{name}", old_prop, new_props[name], old, new, depth + 1)
    if "items" in old_s:
        problems += _response_schema(
            f"{where}[]", old_s["items"], new_s.get("items", {}), old, new, depth + 1
        )
    return problems


def _json_schema(holder: Doc) -> Doc | None:
    content = holder.get("content", {})
    media = content.get("application/json")
    return None if media is None else media.get("schema")


def _resolve(schema: Doc, doc: Doc) -> Doc:
    """``schema`` with ``$ref`` followed (and a lone ``allOf`` member, FastAPI's wrapping)."""
    for _ in range(MAX_DEPTH):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            schema = doc.get("components", {}).get("schemas", {}).get(ref.rsplit("/", 1)[1], {})
        elif len(schema.get("allOf", [])) == 1:
            schema = schema["allOf"][0]
        else:
            break
    return schema


def _type_of(schema: Doc) -> str:
    """A schema's type as a comparable text: ``string``, ``integer|null``, ``object``..."""
    if "type" in schema:
        return str(schema["type"])
    if "anyOf" in schema:
        return "|".join(sorted(_type_of(s) for s in schema["anyOf"]))
    if "properties" in schema:
        return "object"
    return "any"


def main(argv: list[str]) -> int:
    from api.app import create_app
    from reach.settings import Settings

    current = create_app(Settings()).openapi()
    if argv == ["--write"]:  # a release: keep the running code's document
        path = RELEASES_DIR / f"v1-{current['info']['version']}.json"
        path.write_bytes(orjson.dumps(current, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
        print(path)
        return 0
    old = orjson.loads(Path(argv[0]).read_bytes() if argv else RELEASED.read_bytes())
    problems = breaking_changes(old, current)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
