"""Safe YAML loading that remembers where each mapping, key and value was.

Mappings load as :class:`LocatedMap` (a dict) carrying the 1-based line of the
mapping, of each key, and of each value, so validation errors point at the
entry a rule author has to fix. Duplicate keys are refused (PyYAML would keep
the last one silently).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError


class LocatedMap(dict[Any, Any]):
    """A dict with ``line`` (where the mapping starts), ``key_lines`` and
    ``value_lines`` (1-based), and ``value_styles`` (the YAML scalar style of
    each value: None for plain, ``|``/``>`` for block scalars, quotes...)."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}
        self.value_lines: dict[Any, int] = {}
        self.value_styles: dict[Any, str | None] = {}

    def line_of(self, key: Any) -> int:
        """The value's line if the key is present, else the mapping's line."""
        return self.value_lines.get(key, self.line)


class _LocatingLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: _LocatingLoader, node: yaml.MappingNode) -> Iterator[LocatedMap]:
    loader.flatten_mapping(node)
    mapping = LocatedMap(node.start_mark.line + 1)
    yield mapping
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in mapping
        except TypeError:
            raise ConstructorError(None, None, "unhashable mapping key", key_node.start_mark) from None
        if duplicate:
            raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
        mapping.value_lines[key] = value_node.start_mark.line + 1
        mapping.value_styles[key] = getattr(value_node, "style", None)


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def load_located(text: str) -> Any:
    """Parse one YAML document; raises :class:`yaml.YAMLError` (with
    ``problem_mark`` for syntax errors)."""
    return yaml.load(text, Loader=_LocatingLoader)  # a SafeLoader subclass: no arbitrary objects


def error_line(exc: yaml.YAMLError) -> int | None:
    """The 1-based line a YAML error points at, if any."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return mark.line + 1 if mark is not None else None


def error_reason(exc: yaml.YAMLError) -> str:
    """A one-line description of a YAML error, without the position dump."""
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if isinstance(exc, ConstructorError) and problem:
        return f"YAML: {problem}"
    if problem:
        return f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return f"YAML error: {exc}"
