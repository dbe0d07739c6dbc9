"""The ``when`` expression language, compiled to durable-rules conditions.

Expressions are parsed with :mod:`ast` (``mode="eval"``) and never evaluated
by Python: each one compiles to the JSON condition of a durable-rules rule, and
durable-rules does the matching. Supported::

    name == "signup"                        field OP literal, OP in == != < <= > >=
    5 < properties.amount                   literal OP field (flipped)
    0 < properties.count <= 10              chained comparisons (each pair ANDed)
    device.platform in ["ios", "android"]   field in / not in [literal, ...]
    "vip" in segments                       "literal" in / not in list-of-strings field
    version(device.app_version) >= version("1.9.0")   semantic version order (rules/versions.py)
    version(app_version.ios) < version("1.9.0")       the profile's last known version per platform
    has(properties.order_id)                the field is present (not absent, not null)
    not (...), ... and ..., ... or ...      with parentheses

Literals: strings, ints (64-bit), floats written without an exponent, booleans
(``true``/``false`` or ``True``/``False``), and negative numbers.

Semantics (two-valued, so ``not`` is exact):

- A comparison is false when the field is absent, null, or of another type than
  the literal: ``properties.amount >= 500`` is false for ``"600"`` (a string).
  ints and floats compare as numbers; booleans only equal booleans.
- ``x != v`` is ``not (x == v)``: true when ``x`` is absent.
- ``"vip" in segments`` is false when ``segments`` is absent or not a list.
- ``has(x)`` is true when ``x`` holds any value but null, of any type: what a
  trigger tests with it, its template may print without a default.
- ``version(x) OP version("...")`` reads a value that is not a version as absent: every
  ordering and ``==`` are false, ``!=`` is true (its negation); such values are
  counted (:attr:`Projection.unparsable_versions`). Comparing a field named like
  a version with a string (``device.app_version >= "1.9.0"``) is refused: text
  orders ``"1.10.0"`` below ``"1.9.0"``.

How facts reach durable-rules: :class:`Projection` flattens a nested fact into
the flat keys the rule set uses, one key per (field path, value type), e.g.
``properties.amount`` holding a number becomes ``properties__amount:n``, a
list of strings becomes one ``true`` flag per tested member, e.g.
``segments:has:vip``, and a field tested with ``has`` a ``true`` flag
``properties__order_id:present``. Typed keys are how type mismatches read as "absent":
durable-rules itself compares ``"abc" > 5`` as true and ``0 == ""`` as true.
Only the keys the rules reference are posted, so arbitrary ``properties``
never reach durable-rules' 250-properties-per-fact limit.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, TypeAlias

import orjson

from rules.errors import ExpressionError
from rules.versions import looks_like_a_version_field, version_key

Scalar: TypeAlias = str | int | float | bool
Path: TypeAlias = tuple[str, ...]

# Every posted fact carries this key and every condition tests it first. The
# rule set's own state record ({"sid", "id", "$s"}) is evaluated against the
# rules too: without the guard a condition such as `not ("x" in segments)`
# matches the state record, whose action updates the state, which matches
# again -- durable-rules then loops forever inside post().
GUARD_KEY = "reach:fact"
PATH_SEPARATOR = "__"
TAG_STR, TAG_NUM, TAG_BOOL, TAG_VERSION = "s", "n", "b", "v"

MAX_EXPRESSION_LENGTH = 2000
# durable-rules keeps pending alternatives on a 64-entry stack while matching a
# fact (ERR_MAX_STACK_SIZE otherwise); one rule may use at most this many.
MAX_BRANCHES_PER_RULE = 60

_SEGMENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# JSON/YAML spellings, accepted as well as Python's True/False.
_BOOLEAN_NAMES = {"true": True, "false": False}
_INT64 = range(-(2**63), 2**63)
_ORDERING = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_DURABLE_OP = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_COMPLEMENT = {"==": "$neq", "<": "$gte", "<=": "$gt", ">": "$lte", ">=": "$lt"}


class FieldKind(enum.Enum):
    SCALAR = "scalar"  # a top-level string/number/bool: name, priority
    LIST = "list"  # a top-level list of strings: segments, reachable
    OBJECT = "object"  # a nested object, addressed by dotted paths: properties.amount


@dataclasses.dataclass(frozen=True)
class FactSchema:
    """The top-level fields a kind of fact has, used to refuse typos at load time.

    ``index_fields`` are tested first in a condition when compared with ``==``:
    durable-rules hashes equality tests, so rules led by ``name == "x"`` cost
    nothing for events of another name.
    """

    name: str
    fields: Mapping[str, FieldKind]
    index_fields: tuple[str, ...] = ()


TRIGGER_FACT = FactSchema(
    "event",
    {
        "event_id": FieldKind.SCALAR,
        "user_id": FieldKind.SCALAR,
        "name": FieldKind.SCALAR,
        "ts": FieldKind.SCALAR,
        "properties": FieldKind.OBJECT,
        "device": FieldKind.OBJECT,
        "segments": FieldKind.LIST,
        "app_version": FieldKind.OBJECT,  # {platform: version} the profile last saw
    },
    index_fields=("name",),
)

CHANNEL_FACT = FactSchema(
    "reach message",
    {
        "rule_id": FieldKind.SCALAR,
        "template": FieldKind.SCALAR,
        "priority": FieldKind.SCALAR,
        "event": FieldKind.SCALAR,
        "platform": FieldKind.SCALAR,
        "segments": FieldKind.LIST,
        "reachable": FieldKind.LIST,
    },
    index_fields=("event", "rule_id", "template"),
)


# --- the intermediate form ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cmp:
    """``path op value``; op is one of == < <= > >= (``!=`` is ``Not(==)``).

    ``tag`` is the type the field's value is compared as: the literal's own
    (``""``), or ``TAG_VERSION`` with ``value`` a :func:`~rules.versions.version_key`.
    """

    path: Path
    op: str
    value: Scalar
    tag: str = ""


@dataclasses.dataclass(frozen=True)
class Has:
    """``member in path`` where ``path`` holds a list of strings."""

    path: Path
    member: str


@dataclasses.dataclass(frozen=True)
class Present:
    """``has(path)``: the field holds a value other than null."""

    path: Path


@dataclasses.dataclass(frozen=True)
class Not:
    child: Node


@dataclasses.dataclass(frozen=True)
class AllOf:
    children: tuple[Node, ...]


@dataclasses.dataclass(frozen=True)
class AnyOf:
    children: tuple[Node, ...]


Node: TypeAlias = Cmp | Has | Present | Not | AllOf | AnyOf


# --- keys and values as posted to durable-rules -----------------------------------


def scalar_tag(value: object) -> str | None:
    """The type tag of a fact value, or None when it is not a comparable scalar."""
    tag = _EXACT_TAGS.get(type(value))  # fast path: plain JSON types
    if tag is not None:
        return tag
    if isinstance(value, bool):
        return TAG_BOOL
    if isinstance(value, int | float):
        return TAG_NUM
    if isinstance(value, str):
        return TAG_STR
    return None


_EXACT_TAGS: dict[type, str] = {str: TAG_STR, int: TAG_NUM, float: TAG_NUM, bool: TAG_BOOL}


def view_key(path: Path, tag: str) -> str:
    """The flat key of ``path`` holding a value of type ``tag``: ``properties__amount:n``."""
    return PATH_SEPARATOR.join(path) + ":" + tag


def member_key(path: Path, member: str) -> str:
    """The flag key set when the list at ``path`` contains ``member``: ``segments:has:vip``."""
    return PATH_SEPARATOR.join(path) + ":has:" + _escape_member(member)


def present_key(path: Path) -> str:
    """The flag key set when ``path`` holds a value other than null: ``properties__x:present``."""
    return PATH_SEPARATOR.join(path) + ":present"


def _escape_member(member: str) -> str:
    # durable-rules reads "." in a key as a nested path; keep keys to a plain
    # alphabet and percent-encode the rest (UTF-8 bytes), which is unambiguous.
    out = []
    for char in member:
        if char.isascii() and (char.isalnum() or char in "-_"):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def encode_number(value: int | float) -> int | float | orjson.Fragment | None:
    """A number as durable-rules can parse it, or None when it cannot be posted.

    durable-rules' JSON parser refuses exponents (``1e-05``, error 204) and
    64-bit overflow; such numbers are written in fixed notation instead.
    """
    if isinstance(value, int):
        return value if value in _INT64 else _fixed(float(value))
    if not math.isfinite(value):
        return None
    return _fixed(value) if "e" in repr(value) else value


def _fixed(value: float) -> orjson.Fragment | None:
    if not math.isfinite(value):
        return None
    text = format(Decimal(repr(value)), "f")
    return orjson.Fragment(text if "." in text else text + ".0")


def encode_scalar(value: Scalar) -> Any:
    """A fact value ready for ``orjson.dumps``; None means "post as absent"."""
    if type(value) is str or isinstance(value, bool | str):
        return value
    return encode_number(value)


def lookup(fact: Mapping[str, Any], path: Path) -> Any:
    """The value at a dotted ``path`` of a nested fact, or None."""
    value: Any = fact
    for segment in path:
        # `type(...) is dict` first: isinstance against an ABC is slow on the hot path.
        if type(value) is not dict and not isinstance(value, Mapping):
            return None
        value = value.get(segment)
    return value


def flatten_fact(fact: Mapping[str, Any], max_depth: int = 8) -> dict[str, Any]:
    """Every key a fact could be posted with: typed scalar views and list flags.

    Keys that an expression cannot name (not ``[A-Za-z][A-Za-z0-9_]*``, or
    containing ``__``) are skipped, as are objects nested deeper than
    ``max_depth``. The engine posts only the subset its rules reference (see
    :class:`Projection`); this full form is for inspection and tests.
    """
    out: dict[str, Any] = {}
    _flatten_into(out, (), fact, max_depth)
    return out


def _flatten_into(out: dict[str, Any], prefix: Path, value: Any, depth: int) -> None:
    if isinstance(value, Mapping):
        if depth <= 0:
            return
        for key, child in value.items():
            if isinstance(key, str) and _valid_segment(key):
                _flatten_into(out, (*prefix, key), child, depth - 1)
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, str) and prefix:
                out[member_key(prefix, item)] = True
    else:
        tag = scalar_tag(value)
        if tag is not None and prefix:
            out[view_key(prefix, tag)] = value


def _valid_segment(segment: str) -> bool:
    return bool(_SEGMENT.fullmatch(segment)) and PATH_SEPARATOR not in segment


class Projection:
    """Posts only what a rule set reads: ``project(fact)`` is the flat fact.

    Cost is proportional to the number of keys the rules reference, not to the
    size of the fact, and the posted fact stays far below durable-rules' limit
    of about 250 properties per fact.
    """

    def __init__(self, conditions: Iterable[Condition]) -> None:
        views: dict[Path, dict[str, str]] = {}
        members: dict[Path, dict[str, str]] = {}
        versions: dict[Path, str] = {}
        present: dict[Path, str] = {}
        for condition in conditions:
            present.update((path, present_key(path)) for path in condition.present)
            for path, tag in condition.views:
                if tag == TAG_VERSION:
                    versions[path] = view_key(path, tag)
                else:
                    views.setdefault(path, {})[tag] = view_key(path, tag)
            for path, member in condition.members:
                members.setdefault(path, {})[member] = member_key(path, member)
        self._views = tuple(views.items())
        self._members = tuple((path, tuple(by_member.items())) for path, by_member in members.items())
        self._versions = tuple(versions.items())
        self._present = tuple(present.items())
        #: facts whose value for a ``version(...)`` field was present but not a version
        self.unparsable_versions = 0

    @property
    def max_keys(self) -> int:
        """Most keys a projected fact can carry (one view per path, every flag)."""
        views = len(self._views) + len(self._versions) + len(self._present)
        return 1 + views + sum(len(members) for _, members in self._members)

    def project(self, fact: Mapping[str, Any]) -> dict[str, Any]:
        """The flat fact to post: the guard key plus the referenced keys present."""
        out: dict[str, Any] = {GUARD_KEY: 1}
        for path, keys_by_tag in self._views:
            value = lookup(fact, path)
            key = keys_by_tag.get(scalar_tag(value) or "")
            if key is not None:
                encoded = encode_scalar(value)
                if encoded is not None:
                    out[key] = encoded
        for path, keyed_members in self._members:
            value = lookup(fact, path)
            if isinstance(value, list | tuple) and value:
                present = {item for item in value if isinstance(item, str)}
                for member, key in keyed_members:
                    if member in present:
                        out[key] = True
        for path, key in self._versions:
            self._project_version(out, key, lookup(fact, path))
        for path, key in self._present:
            if lookup(fact, path) is not None:
                out[key] = True
        return out

    def _project_version(self, out: dict[str, Any], key: str, value: Any) -> None:
        if value is None:
            return
        encoded = version_key(value)
        if encoded is None:
            self.unparsable_versions += 1
        else:
            out[key] = encoded


# --- compiled conditions ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Condition:
    """A compiled ``when`` expression.

    ``definition()`` is a fresh durable-rules condition (durable-rules mutates
    what it is given). ``branches`` is the number of alternatives
    durable-rules expands it to; ``leading`` is the (key, JSON value) of the
    equality test every alternative starts with, if any, which the engine uses
    to bound how many alternatives one fact can reach.
    """

    source: str
    definition_json: str
    branches: int
    leading: tuple[str, str] | None
    views: frozenset[tuple[Path, str]]
    members: frozenset[tuple[Path, str]]
    present: frozenset[Path] = frozenset()  # the paths tested with has(...)

    def definition(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.definition_json)
        return result


def compile_expression(source: str, schema: FactSchema) -> Condition:
    """Compile ``source`` for facts of ``schema``; raise :class:`ExpressionError`."""
    node = parse_expression(source, schema)
    body = _emit(node, True, schema)
    parts = body["$and"] if _op_of(body) == "$and" else [body]
    definition = {"$and": [{GUARD_KEY: 1}, *parts]}
    branches = _branch_count(body)
    if branches > MAX_BRANCHES_PER_RULE:
        raise ExpressionError(
            f"expression expands to {branches} alternatives for the rule engine "
            f"(limit {MAX_BRANCHES_PER_RULE}); split it into several rules"
        )
    views, members, present = _references(node)
    return Condition(
        source=source,
        definition_json=json.dumps(definition, ensure_ascii=False, sort_keys=True),
        branches=branches,
        leading=_leading(parts[0]),
        views=frozenset(views),
        members=frozenset(members),
        present=frozenset(present),
    )


def parse_expression(source: str, schema: FactSchema) -> Node:
    """Parse ``source`` into the intermediate form; raise :class:`ExpressionError`."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("empty expression")
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_LENGTH} characters")
    # Newlines become spaces (same offsets) so block scalars need no parentheses.
    flat = source.replace("\r", " ").replace("\n", " ")
    try:
        tree = ast.parse(flat, mode="eval")
    except SyntaxError as exc:
        line, column = _position(source, (exc.offset or 1) - 1)
        raise ExpressionError(f"syntax error: {exc.msg}", line, column) from None
    return _Parser(source, flat, schema).condition(tree.body)


def _position(source: str, char_offset: int) -> tuple[int, int]:
    before = source[: max(char_offset, 0)]
    line = before.count("\n") + 1
    return line, char_offset - (before.rfind("\n") + 1) + 1


class _Parser:
    """Turns an ``ast`` expression into :data:`Node`, refusing everything else."""

    def __init__(self, source: str, flat: str, schema: FactSchema) -> None:
        self._source = source
        self._flat_bytes = flat.encode("utf-8")
        self._schema = schema

    def fail(self, node: ast.AST, reason: str) -> ExpressionError:
        byte_offset = getattr(node, "col_offset", 0)
        char_offset = len(self._flat_bytes[:byte_offset].decode("utf-8", "ignore"))
        line, column = _position(self._source, char_offset)
        return ExpressionError(reason, line, column)

    def condition(self, node: ast.expr) -> Node:
        if isinstance(node, ast.BoolOp):
            children = tuple(self.condition(value) for value in node.values)
            return AllOf(children) if isinstance(node.op, ast.And) else AnyOf(children)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return Not(self.condition(node.operand))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call) and _is_call(node, "has"):
            return Present(self.path(node.args[0]))
        raise self.fail(node, f'{_describe(node)} is not a condition; compare a field, e.g. name == "x"')

    def compare(self, node: ast.Compare) -> Node:
        lefts = [node.left, *node.comparators[:-1]]
        pairs = [
            self.pair(left, op, right)
            for left, op, right in zip(lefts, node.ops, node.comparators, strict=True)
        ]
        return pairs[0] if len(pairs) == 1 else AllOf(tuple(pairs))

    def pair(self, left: ast.expr, op: ast.cmpop, right: ast.expr) -> Node:
        if isinstance(op, ast.In | ast.NotIn):
            test = self.membership(left, right)
            return Not(test) if isinstance(op, ast.NotIn) else test
        if isinstance(op, ast.Is | ast.IsNot):
            raise self.fail(left, "'is' is not supported; use == or !=")
        symbol = (
            "==" if isinstance(op, ast.Eq) else "!=" if isinstance(op, ast.NotEq) else _ORDERING[type(op)]
        )
        if _is_version_call(left) or _is_version_call(right):
            return self.version_pair(left, symbol, right)
        left_is_field, right_is_field = _is_field(left), _is_field(right)
        if left_is_field and right_is_field:
            raise self.fail(left, "comparing two fields is not supported; compare a field with a literal")
        if not (left_is_field or right_is_field):
            for side in (left, right):
                if not _is_literal(side):
                    raise self.fail(side, f"{_describe(side)} is not supported")
            raise self.fail(left, "a comparison needs a field on one side, e.g. properties.amount >= 500")
        field, literal = (left, right) if left_is_field else (right, left)
        symbol = symbol if left_is_field else _FLIPPED[symbol]
        return self.comparison(field, symbol, literal)

    def comparison(self, field: ast.expr, symbol: str, literal: ast.expr) -> Node:
        path = self.scalar_path(field)
        value = self.literal(literal)
        if isinstance(value, bool) and symbol not in ("==", "!="):
            raise self.fail(literal, f"{symbol} cannot compare with a boolean; use == or !=")
        if isinstance(value, str) and symbol not in ("==", "!=") and looks_like_a_version_field(path):
            name = ".".join(path)
            raise self.fail(
                field,
                f'\'{name}\' {symbol} "{value}" compares text, which orders "1.10.0" below "1.9.0";'
                f' write version({name}) {symbol} version("{value}")',
            )
        test = Cmp(path, "==" if symbol == "!=" else symbol, value)
        return Not(test) if symbol == "!=" else test

    def version_pair(self, left: ast.expr, symbol: str, right: ast.expr) -> Node:
        """``version(field) OP version("1.9.0")``, either way round; a plain string works as the
        literal side, and the field side may leave out ``version(...)``."""
        left_is_field = _is_field(_unwrap_version(left))
        if left_is_field == _is_field(_unwrap_version(right)):
            raise self.fail(left, _VERSION_FORM)
        field, literal = (left, right) if left_is_field else (right, left)
        symbol = symbol if left_is_field else _FLIPPED[symbol]
        path = self.scalar_path(_unwrap_version(field))
        text = self.literal(_unwrap_version(literal))
        key = version_key(text)
        if key is None:
            raise self.fail(literal, f'{text!r} is not a version (e.g. "1.9.0", "2.0.0-rc1")')
        test = Cmp(path, "==" if symbol == "!=" else symbol, key, TAG_VERSION)
        return Not(test) if symbol == "!=" else test

    def membership(self, left: ast.expr, right: ast.expr) -> Node:
        if _is_field(left):
            return self.in_list(left, right)
        if _is_field(right):
            member = self.literal(left)
            if not isinstance(member, str):
                raise self.fail(left, "only a string can be tested for membership in a list field")
            return Has(self.list_path(right), member)
        raise self.fail(left, "'in' needs a field: field in [...] or \"literal\" in field")

    def in_list(self, field: ast.expr, right: ast.expr) -> Node:
        if not isinstance(right, ast.List | ast.Tuple | ast.Set):
            raise self.fail(
                right, 'the right side of \'field in ...\' must be a list of literals, e.g. ["a", "b"]'
            )
        if not right.elts:
            raise self.fail(right, "empty list: the test could never be true")
        path = self.scalar_path(field)
        return AnyOf(tuple(Cmp(path, "==", self.literal(item)) for item in right.elts))

    def scalar_path(self, node: ast.expr) -> Path:
        path = self.path(node)
        kind = self._schema.fields[path[0]]
        if kind is FieldKind.LIST:
            raise self.fail(node, f"'{path[0]}' is a list; test membership, e.g. \"x\" in {path[0]}")
        return path

    def list_path(self, node: ast.expr) -> Path:
        path = self.path(node)
        if self._schema.fields[path[0]] is FieldKind.SCALAR:
            raise self.fail(node, f"'{path[0]}' is not a list")
        return path

    def path(self, node: ast.expr) -> Path:
        segments: list[str] = []
        current = node
        while isinstance(current, ast.Attribute):
            segments.append(current.attr)
            current = current.value
        if not isinstance(current, ast.Name):
            raise self.fail(node, "attributes are only allowed on field names")
        segments.append(current.id)
        path = tuple(reversed(segments))
        self.check_path(node, path)
        return path

    def check_path(self, node: ast.expr, path: Path) -> None:
        fields = self._schema.fields
        if path[0] not in fields:
            raise self.fail(
                node, f"unknown field '{path[0]}' in {self._schema.name} facts{_suggest(path[0], fields)}"
            )
        for segment in path:
            if not _valid_segment(segment):
                raise self.fail(node, f"field name '{segment}' must match [A-Za-z][A-Za-z0-9_]* without '__'")
        kind = fields[path[0]]
        if kind is FieldKind.OBJECT and len(path) == 1:
            raise self.fail(node, f"'{path[0]}' is an object; name one of its fields, e.g. {path[0]}.x")
        if kind is not FieldKind.OBJECT and len(path) > 1:
            raise self.fail(node, f"'{path[0]}' has no sub-fields")

    def literal(self, node: ast.expr) -> Scalar:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.literal(node.operand)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(node, "a sign applies only to numbers")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Name) and node.id in _BOOLEAN_NAMES:
            return _BOOLEAN_NAMES[node.id]
        if not isinstance(node, ast.Constant):
            raise self.fail(node, f"{_describe(node)} is not supported here; expected a literal")
        return self.constant(node)

    def constant(self, node: ast.Constant) -> Scalar:
        value = node.value
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value not in _INT64:
                raise self.fail(node, "integer literal outside the 64-bit range")
            return value
        if isinstance(value, float):
            if not math.isfinite(value) or "e" in repr(value):
                raise self.fail(node, f"number {value!r} cannot be used: write it without an exponent")
            return value
        if isinstance(value, str):
            return value
        kind = "null" if value is None else type(value).__name__
        raise self.fail(node, f"{kind} literals are not supported (strings, numbers, true, false)")


def _is_field(node: ast.expr) -> bool:
    if isinstance(node, ast.Name) and node.id in _BOOLEAN_NAMES:
        return False
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name)


def _is_version_call(node: ast.expr) -> bool:
    return _is_call(node, "version")


def _is_call(node: ast.expr, name: str) -> bool:
    """``name(x)``: one positional argument, no keywords."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == name
        and len(node.args) == 1
        and not node.keywords
    )


def _unwrap_version(node: ast.expr) -> ast.expr:
    """The argument of ``version(x)``; any other node as it is."""
    return node.args[0] if isinstance(node, ast.Call) and _is_version_call(node) else node


_VERSION_FORM = (
    'version(...) compares a field with a version, e.g. version(device.app_version) >= version("1.9.0")'
)


def _is_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) or (isinstance(node, ast.Name) and node.id in _BOOLEAN_NAMES)


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return "arithmetic"
    if isinstance(node, ast.Subscript):
        return "indexing (use dotted paths like properties.order_id)"
    if isinstance(node, ast.Attribute) and not _is_field(node):
        return "an attribute of a literal"
    if isinstance(node, ast.Name | ast.Attribute):
        return "a bare field"
    if isinstance(node, ast.Constant):
        return "a bare literal"
    return f"'{type(node).__name__}'"


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(choices))})"


# --- emission to durable-rules JSON -------------------------------------------------


def _emit(node: Node, positive: bool, schema: FactSchema) -> dict[str, Any]:
    """durable-rules JSON for ``node`` (or its negation), negations pushed to the leaves."""
    if isinstance(node, Cmp):
        return _emit_cmp(node) if positive else _emit_not_cmp(node)
    if isinstance(node, Has | Present):
        key = member_key(node.path, node.member) if isinstance(node, Has) else present_key(node.path)
        return {key: True} if positive else {"$nex": {key: 1}}
    if isinstance(node, Not):
        return _emit(node.child, not positive, schema)
    if isinstance(node, AnyOf) and not positive:
        return _join("$and", list(_emit_none_of(node.children, schema)), schema)
    conjunction = isinstance(node, AllOf) == positive
    children = [_emit(child, positive, schema) for child in node.children]
    return _join("$and" if conjunction else "$or", children, schema)


def _emit_cmp(node: Cmp) -> dict[str, Any]:
    key = view_key(node.path, _cmp_tag(node))
    if node.op == "==":
        return {key: node.value}
    return {_DURABLE_OP[node.op]: {key: node.value}}


def _emit_not_cmp(node: Cmp) -> dict[str, Any]:
    # durable-rules' $neq/$lt... are false on an absent key; "absent" must read
    # as "not equal", so the negation is (absent or complement).
    key = view_key(node.path, _cmp_tag(node))
    return {"$or": [{"$nex": {key: 1}}, {_COMPLEMENT[node.op]: {key: node.value}}]}


def _emit_none_of(children: tuple[Node, ...], schema: FactSchema) -> Iterator[dict[str, Any]]:
    """``not (a or b ...)``, grouping ``x == v1 or x == v2`` into one
    (absent or all-different) test per key: 2 alternatives instead of 2**n."""
    by_key: dict[str, list[Cmp]] = {}
    for child in children:
        if isinstance(child, Cmp) and child.op == "==":
            by_key.setdefault(view_key(child.path, _cmp_tag(child)), []).append(child)
        else:
            yield _emit(child, False, schema)
    for key, tests in by_key.items():
        if len(tests) == 1:
            yield _emit_not_cmp(tests[0])
        else:
            different = [{"$neq": {key: test.value}} for test in tests]
            yield {"$or": [{"$nex": {key: 1}}, {"$and": different}]}


def _cmp_tag(node: Cmp) -> str:
    return node.tag or _literal_tag(node.value)


def _literal_tag(value: Scalar) -> str:
    tag = scalar_tag(value)
    assert tag is not None  # literals are validated by the parser
    return tag


def _join(op: str, parts: list[dict[str, Any]], schema: FactSchema) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for part in parts:
        flat.extend(part[op] if _op_of(part) == op else [part])
    if op == "$and":
        flat = _equalities_first(flat, schema)
    return flat[0] if len(flat) == 1 else {op: flat}


def _equalities_first(parts: list[dict[str, Any]], schema: FactSchema) -> list[dict[str, Any]]:
    # durable-rules tests an alternative's terms in order and hashes equality
    # tests, so leading with `name == "x"` prunes every rule of another event.
    def rank(part: dict[str, Any]) -> int:
        if _op_of(part) is not None:
            return len(schema.index_fields) + 1
        field = next(iter(part)).split(":")[0]
        index = schema.index_fields
        return index.index(field) if field in index else len(index)

    return sorted(parts, key=rank)


def _op_of(part: Mapping[str, Any]) -> str | None:
    if len(part) == 1:
        key = next(iter(part))
        if key.startswith("$"):
            return key
    return None


def _branch_count(part: Mapping[str, Any]) -> int:
    """Alternatives in durable-rules' disjunctive form (saturates just over the limit)."""
    op = _op_of(part)
    if op == "$or":
        return min(sum(_branch_count(p) for p in part["$or"]), MAX_BRANCHES_PER_RULE * 1000)
    if op == "$and":
        product = 1
        for p in part["$and"]:
            product = min(product * _branch_count(p), MAX_BRANCHES_PER_RULE * 1000)
        return product
    return 1


def _leading(part: Mapping[str, Any]) -> tuple[str, str] | None:
    if _op_of(part) is not None:
        return None
    key, value = next(iter(part.items()))
    return key, json.dumps(value)


def _references(node: Node) -> tuple[set[tuple[Path, str]], set[tuple[Path, str]], set[Path]]:
    views: set[tuple[Path, str]] = set()
    members: set[tuple[Path, str]] = set()
    present: set[Path] = set()
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Cmp):
            views.add((current.path, _cmp_tag(current)))
        elif isinstance(current, Has):
            members.add((current.path, current.member))
        elif isinstance(current, Present):
            present.add(current.path)
        elif isinstance(current, Not):
            stack.append(current.child)
        else:
            stack.extend(current.children)
    return views, members, present
