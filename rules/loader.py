"""Load and validate a directory of YAML rule files into a :class:`RuleBook`.

Every ``*.yaml`` / ``*.yml`` file of the directory (not recursive, sorted by
name, names starting with ``.`` skipped so editor swap files never load) may
hold ``triggers``, ``channel_rules`` and ``templates``. Validation reports
every problem it finds, each with file and line: YAML syntax, unknown or
missing keys, types, id format, duplicate ids across files (triggers and
channel rules share one namespace, templates have their own), unknown
templates, unknown channels (when the known ones are given), expression and
template syntax, and the rule engine's capacity limits.

Sizes are checked before anything is read whole (:class:`RuleLimits`): a file
over the per-file limit is refused without being parsed, and a directory whose
files add up to more than the total limit is refused without reading any.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import yaml

from rules.dedup import DEFAULT_DEDUP_KEY, parse_dedup_key
from rules.durations import DurationError, format_duration, parse_duration
from rules.engine import check_capacity, probe_condition
from rules.errors import ExpressionError, RuleFileError, RuleSetError
from rules.expr import CHANNEL_FACT, TRIGGER_FACT, Condition, FactSchema, compile_expression
from rules.model import DEFAULT_PRIORITY, KINDS, SKIP, UPGRADE, ChannelRule, RuleBook, Template, TriggerRule
from rules.templating import compile_source
from rules.versions import version_key
from rules.yamlnodes import LocatedMap, error_line, error_reason, load_located

__all__ = ["RULE_FILE_SUFFIXES", "Categories", "RuleBook", "RuleLimits", "load_rulebook", "rule_files"]

RULE_FILE_SUFFIXES = (".yaml", ".yml")
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
CHANNEL_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
SECTIONS = ("triggers", "channel_rules", "templates")


@dataclasses.dataclass(frozen=True)
class RuleLimits:
    """Limits on rule files (``Settings.rules_max_file_bytes``,
    ``rules_max_total_bytes`` and ``rules_max_delay``; the defaults are theirs).
    Parsing YAML costs about 40 times a file's size in memory and a second per
    megabyte, so the byte limits keep a reload short and bounded; the delay
    limit bounds how long a delayed message (and its cancel bookkeeping) waits
    in Redis."""

    max_file_bytes: int = 1 << 20
    max_total_bytes: int = 16 << 20
    max_delay_ms: int = 7 * 86_400_000

    FILE_SETTING = "REACH_RULES_MAX_FILE_BYTES"
    TOTAL_SETTING = "REACH_RULES_MAX_TOTAL_BYTES"
    DELAY_SETTING = "REACH_RULES_MAX_DELAY"


@dataclasses.dataclass(frozen=True)
class Categories:
    """The message categories a rule may name (``Settings.categories``), and the one a
    rule without ``category`` gets (``Settings.default_category``)."""

    names: tuple[str, ...] = ("transactional", "marketing", "notification")
    default: str = "notification"


DEFAULT_CATEGORIES = Categories()


@dataclasses.dataclass(frozen=True)
class _Keys:
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


TOP_LEVEL_KEYS = _Keys((), SECTIONS)
TRIGGER_KEYS = _Keys(
    ("id", "when", "template", "channels"),
    ("priority", "dedup_key", "delay", "cancel_if", "category", "description"),
)
CHANNEL_RULE_KEYS = _Keys(("id", "when", "use"), ("description",))
TEMPLATE_KEYS = _Keys(
    ("title", "text"),
    (
        "html",
        "description",
        "min_app_version",
        "fallback",
        "tracking",
        "kind",
        "minimum_version",
        "upgrade_url",
        "platform",
    ),
)
FALLBACK_KEYS = _Keys(("channel",), ("template",))
UPGRADE_KEYS = ("minimum_version", "upgrade_url", "platform")


def rule_files(path: str | Path) -> list[Path]:
    """The rule files of a directory, sorted; a single file is its own list.

    Raises :class:`FileNotFoundError` / :class:`NotADirectoryError` like ``os.scandir``.
    """
    root = Path(path)
    if root.is_file():
        return [root]
    return sorted(
        (
            p
            for p in root.iterdir()
            if p.suffix in RULE_FILE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def load_rulebook(
    directory: str | Path,
    known_channels: Collection[str] | None = None,
    limits: RuleLimits = RuleLimits(),
    categories: Categories = DEFAULT_CATEGORIES,
) -> RuleBook:
    """Load every rule file of ``directory`` (or one file) into a :class:`RuleBook`.

    ``known_channels``: when given, channel names outside it are refused.
    ``limits``: files over them are refused before being read.
    ``categories``: the categories a trigger may name, and the default for one that names none.
    Raises :class:`RuleSetError` listing every problem found.
    """
    problems = _Problems()
    files = _sized_files(_list_files(Path(directory), problems), Path(directory), limits, problems)
    contents = [_parse_file(path, problems, known_channels, limits, categories) for path in files]
    triggers = [entry for content in contents for entry in content.triggers]
    channel_rules = [entry for content in contents for entry in content.channel_rules]
    templates = [entry for content in contents for entry in content.templates]
    _check_duplicates([*triggers, *channel_rules], problems)
    _check_duplicates(templates, problems)
    refs = [ref for content in contents for ref in content.template_refs]
    _check_template_refs(refs, {t.value.id for t in templates}, problems)
    _check_fallback_cycles(templates, problems)
    _check_channel_fallbacks(templates, problems)
    _check_capacity(_event_conditions(triggers), TRIGGER_FACT, problems)
    _check_capacity([(e.value.condition, e) for e in channel_rules], CHANNEL_FACT, problems)
    if problems.errors:
        raise RuleSetError(problems.errors)
    return RuleBook(
        triggers=tuple(entry.value for entry in triggers),
        channel_rules=tuple(entry.value for entry in channel_rules),
        templates=MappingProxyType({entry.value.id: entry.value for entry in templates}),
        fingerprint=_fingerprint(contents),
        files=tuple(content.path for content in contents),
    )


# --- bookkeeping ----------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.errors: list[RuleFileError] = []

    def add(self, path: str, line: int | None, reason: str) -> None:
        self.errors.append(RuleFileError(path, line, reason))


@dataclasses.dataclass(frozen=True)
class _Entry:
    """A loaded object with where it came from, for cross-file checks."""

    value: Any  # TriggerRule | ChannelRule | Template
    path: str
    line: int

    @property
    def id(self) -> str:
        return str(self.value.id)


@dataclasses.dataclass
class _FileContent:
    path: str
    digest_input: bytes = b""
    triggers: list[_Entry] = dataclasses.field(default_factory=list)
    channel_rules: list[_Entry] = dataclasses.field(default_factory=list)
    templates: list[_Entry] = dataclasses.field(default_factory=list)
    # (template id, path, line) of every trigger, valid or not: unknown templates are
    # reported even for triggers with other problems.
    template_refs: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Context:
    """Where checks report to: one file, its problems, the known channels."""

    path: str
    problems: _Problems
    known_channels: Collection[str] | None
    max_delay_ms: int = RuleLimits.max_delay_ms
    categories: Categories = DEFAULT_CATEGORIES
    template_refs: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)

    def error(self, line: int | None, reason: str) -> None:
        self.problems.add(self.path, line, reason)

    @property
    def count(self) -> int:
        return len(self.problems.errors)


def _list_files(root: Path, problems: _Problems) -> list[Path]:
    try:
        files = rule_files(root)
    except OSError as exc:
        problems.add(str(root), None, f"cannot read rule directory: {exc.strerror or exc}")
        return []
    if not files:
        problems.add(str(root), None, f"no rule files ({', '.join('*' + s for s in RULE_FILE_SUFFIXES)})")
    return files


def _sized_files(files: list[Path], root: Path, limits: RuleLimits, problems: _Problems) -> list[Path]:
    """The files within the per-file limit (each one over it is reported), or
    none when those add up to more than the total limit."""
    sizes = {path: _file_size(path, problems) for path in files}
    kept = [p for p, size in sizes.items() if size is not None and _within(p, size, limits, problems)]
    total = sum(sizes[path] or 0 for path in kept)
    if total <= limits.max_total_bytes:
        return kept
    problems.add(
        str(root),
        None,
        f"rule files are {total} bytes together, over the limit of "
        f"{limits.max_total_bytes} ({RuleLimits.TOTAL_SETTING})",
    )
    return []


def _file_size(path: Path, problems: _Problems) -> int | None:
    try:
        return path.stat().st_size
    except OSError as exc:
        problems.add(str(path), None, f"cannot read: {exc.strerror or exc}")
        return None


def _within(path: Path, size: int, limits: RuleLimits, problems: _Problems) -> bool:
    if size <= limits.max_file_bytes:
        return True
    problems.add(str(path), None, _too_large(size, limits.max_file_bytes))
    return False


def _too_large(size: int | str, limit: int) -> str:
    return f"file is {size} bytes, over the limit of {limit} ({RuleLimits.FILE_SETTING})"


def _read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes; raises :class:`_TooLarge` past ``limit`` (a file can grow
    between the size check and the read: never read more than the limit)."""
    with path.open("rb") as handle:
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise _TooLarge(limit)
    return raw


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


def _fingerprint(contents: Iterable[_FileContent]) -> str:
    digest = hashlib.sha256()
    for content in contents:
        digest.update(content.digest_input)
    return digest.hexdigest()


# --- one file -------------------------------------------------------------------


def _parse_file(
    path: Path,
    problems: _Problems,
    known_channels: Collection[str] | None,
    limits: RuleLimits,
    categories: Categories = DEFAULT_CATEGORIES,
) -> _FileContent:
    ctx = _Context(str(path), problems, known_channels, limits.max_delay_ms, categories)
    content = _FileContent(str(path))
    try:
        raw = _read_bounded(path, limits.max_file_bytes)
        text = raw.decode("utf-8")
    except _TooLarge as exc:
        ctx.error(None, _too_large(f"more than {exc.limit}", exc.limit))
        return content
    except OSError as exc:
        ctx.error(None, f"cannot read: {exc.strerror or exc}")
        return content
    except UnicodeDecodeError as exc:
        ctx.error(None, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
        return content
    content.digest_input = path.name.encode() + b"\0" + raw + b"\0"
    try:
        data = load_located(text)
    except yaml.YAMLError as exc:
        ctx.error(error_line(exc), error_reason(exc))
        return content
    if data is None:
        return content
    if not isinstance(data, LocatedMap):
        ctx.error(1, f"the top level must be a mapping with {', '.join(SECTIONS)}")
        return content
    _check_keys(ctx, data, TOP_LEVEL_KEYS, "top level")
    content.triggers = list(_section_entries(ctx, data, "triggers", _parse_trigger))
    content.channel_rules = list(_section_entries(ctx, data, "channel_rules", _parse_channel_rule))
    content.templates = list(_parse_templates(ctx, data))
    content.template_refs = ctx.template_refs
    return content


def _section_entries(
    ctx: _Context, data: LocatedMap, section: str, parse: Callable[[_Context, LocatedMap], _Entry | None]
) -> Iterable[_Entry]:
    items = data.get(section)
    if items is None:
        return
    if not isinstance(items, list):
        ctx.error(data.line_of(section), f"'{section}' must be a list of entries")
        return
    for item in items:
        if not isinstance(item, LocatedMap):
            ctx.error(
                data.line_of(section), f"each entry of '{section}' must be a mapping, got {_type_name(item)}"
            )
            continue
        entry = parse(ctx, item)
        if entry is not None:
            yield entry


def _parse_trigger(ctx: _Context, item: LocatedMap) -> _Entry | None:
    before = ctx.count
    _check_keys(ctx, item, TRIGGER_KEYS, "trigger")
    rule_id = _identifier(ctx, item, "id")
    when = _expression(ctx, item, "when", TRIGGER_FACT)
    template = _identifier(ctx, item, "template")
    if template:
        ctx.template_refs.append((template, ctx.path, item.line_of("template")))
    channels = _channels(ctx, item, "channels")
    priority = _priority(ctx, item)
    dedup_key = _dedup_key(ctx, item)
    delay_ms = _delay(ctx, item)
    cancel_if = _cancel_if(ctx, item)
    category = _category(ctx, item)
    _text(ctx, item, "description", required=False)
    if ctx.count > before:
        return None
    source = f"{ctx.path}:{item.line}"
    rule = TriggerRule(
        rule_id, when, template, channels, priority, dedup_key, source, delay_ms, cancel_if, category
    )
    return _Entry(rule, ctx.path, item.line)


def _parse_channel_rule(ctx: _Context, item: LocatedMap) -> _Entry | None:
    before = ctx.count
    _check_keys(ctx, item, CHANNEL_RULE_KEYS, "channel rule")
    rule_id = _identifier(ctx, item, "id")
    when = _expression(ctx, item, "when", CHANNEL_FACT)
    use = _channels(ctx, item, "use")
    _text(ctx, item, "description", required=False)
    if ctx.count > before:
        return None
    return _Entry(ChannelRule(rule_id, when, use, f"{ctx.path}:{item.line}"), ctx.path, item.line)


def _parse_templates(ctx: _Context, data: LocatedMap) -> Iterable[_Entry]:
    templates = data.get("templates")
    if templates is None:
        return
    if not isinstance(templates, LocatedMap):
        ctx.error(
            data.line_of("templates"), "'templates' must be a mapping of template id to {title, text, html}"
        )
        return
    for template_id, body in templates.items():
        line = templates.key_lines[template_id]
        entry = _parse_template(ctx, template_id, body, line)
        if entry is not None:
            yield entry


def _parse_template(ctx: _Context, template_id: Any, body: Any, line: int) -> _Entry | None:
    before = ctx.count
    if not isinstance(template_id, str) or not ID_PATTERN.fullmatch(template_id):
        ctx.error(line, f"template id {template_id!r} must match {ID_PATTERN.pattern}")
    if not isinstance(body, LocatedMap):
        ctx.error(line, f"template {template_id!r} must be a mapping with title, text and optional html")
        return None
    _check_keys(ctx, body, TEMPLATE_KEYS, "template")
    fields = {
        name: _template_source(ctx, body, name, required=name != "html") for name in ("title", "text", "html")
    }
    _text(ctx, body, "description", required=False)
    min_version, fallback, fallback_channel = _app_version_gate(ctx, body)
    tracking = _flag(ctx, body, "tracking", default=True)
    upgrade = _upgrade_fields(ctx, body)
    if ctx.count > before:
        return None
    template = Template(
        template_id,
        fields["title"],
        fields["text"],
        fields["html"],
        f"{ctx.path}:{line}",
        min_version,
        fallback,
        tracking,
        fallback_channel,
        **upgrade,
    )
    return _Entry(template, ctx.path, line)


def _app_version_gate(ctx: _Context, body: LocatedMap) -> tuple[str, str, str]:
    """``min_app_version`` (a version) and ``fallback``: a template id, ``skip``, or
    ``{channel: inbox, template: id}`` (the template optional). Returns the minimum, the
    fallback template (or ``skip``) and the fallback channel."""
    minimum = _text(ctx, body, "min_app_version", required=False).strip()
    if minimum and version_key(minimum) is None:
        ctx.error(
            body.line_of("min_app_version"), f"'min_app_version' {minimum!r} is not a version (e.g. 1.9.0)"
        )
    if "fallback" in body and not minimum:
        ctx.error(body.line_of("fallback"), "'fallback' needs 'min_app_version': it is what older apps get")
    if isinstance(body.get("fallback"), LocatedMap):
        template, channel = _channel_fallback(ctx, body["fallback"], body.line_of("fallback"))
        return minimum, template, channel
    fallback = _text(ctx, body, "fallback", required=False).strip()
    if fallback and fallback != SKIP:
        _template_ref(ctx, fallback, body.line_of("fallback"))
    return minimum, fallback or (SKIP if minimum else ""), ""


def _channel_fallback(ctx: _Context, fallback: LocatedMap, line: int) -> tuple[str, str]:
    """``{channel, template}`` of a fallback to another channel."""
    _check_keys(ctx, fallback, FALLBACK_KEYS, "fallback")
    channel = fallback.get("channel")
    if channel is not None and not _channel_ok(ctx, line, "fallback", channel, ()):
        channel = ""
    template = _text(ctx, fallback, "template", required=False).strip()
    if template:
        _template_ref(ctx, template, fallback.line_of("template"))
    return template, channel or ""


def _template_ref(ctx: _Context, template_id: str, line: int) -> None:
    if ID_PATTERN.fullmatch(template_id):
        ctx.template_refs.append((template_id, ctx.path, line))
    else:
        ctx.error(line, f"'fallback' {template_id!r} must be a template id, {SKIP!r} or {{channel: name}}")


def _upgrade_fields(ctx: _Context, body: LocatedMap) -> dict[str, str]:
    """``kind`` and, for ``kind: upgrade``, its ``minimum_version``, ``upgrade_url`` and
    ``platform`` (each optional: the configured one of the app's platform)."""
    fields = {key: _text(ctx, body, key, required=False).strip() for key in ("kind", *UPGRADE_KEYS)}
    if fields["kind"] not in KINDS:
        ctx.error(body.line_of("kind"), f"'kind' {fields['kind']!r} must be {UPGRADE!r} or left out")
    for key in UPGRADE_KEYS:
        if fields[key] and fields["kind"] != UPGRADE:
            ctx.error(body.line_of(key), f"{key!r} is for 'kind: {UPGRADE}' templates")
    version = fields["minimum_version"]
    if version and version_key(version) is None:
        ctx.error(
            body.line_of("minimum_version"), f"'minimum_version' {version!r} is not a version (e.g. 1.9.0)"
        )
    url = fields["upgrade_url"]
    if url and not url.startswith(("https://", "http://")):
        ctx.error(body.line_of("upgrade_url"), f"'upgrade_url' {url[:80]!r} must be an http(s) URL")
    fields["platform"] = fields["platform"].lower()
    return fields


# --- field checks: report problems, return a usable default ------------------------


def _check_keys(ctx: _Context, item: LocatedMap, keys: _Keys, what: str) -> None:
    allowed = (*keys.required, *keys.optional)
    for key in item:
        if key not in allowed:
            ctx.error(
                item.key_lines.get(key, item.line), f"unknown key {key!r} in {what}{_hint(str(key), allowed)}"
            )
    for key in keys.required:
        if key not in item:
            ctx.error(item.line, f"{what} is missing '{key}'")


def _text(ctx: _Context, item: LocatedMap, key: str, required: bool = True, default: str = "") -> str:
    if key not in item:
        return default  # a missing required key is reported by _check_keys
    value = item[key]
    if not isinstance(value, str):
        ctx.error(item.line_of(key), f"'{key}' must be a string, got {_type_name(value)}")
        return default
    if required and not value.strip():
        ctx.error(item.line_of(key), f"'{key}' must not be empty")
    return value


def _flag(ctx: _Context, item: LocatedMap, key: str, default: bool) -> bool:
    value = item.get(key, default)
    if not isinstance(value, bool):
        ctx.error(item.line_of(key), f"'{key}' must be true or false, got {_type_name(value)}")
        return default
    return value


def _identifier(ctx: _Context, item: LocatedMap, key: str) -> str:
    value = _text(ctx, item, key)
    if value and not ID_PATTERN.fullmatch(value):
        ctx.error(item.line_of(key), f"'{key}' {value!r} must match {ID_PATTERN.pattern}")
    return value


def _expression(ctx: _Context, item: LocatedMap, key: str, schema: FactSchema) -> str:
    source = _text(ctx, item, key)
    if not source.strip():
        return source
    try:
        condition = compile_expression(source, schema)
    except ExpressionError as exc:
        ctx.error(
            _inner_line(item, key, exc.line), f"invalid expression in '{key}': {_expression_reason(exc)}"
        )
        return source
    _probe(ctx, item, key, condition)
    return source


def _probe(ctx: _Context, item: LocatedMap, key: str, condition: Condition) -> None:
    reason = probe_condition(condition)
    if reason is not None:
        ctx.error(item.line_of(key), f"invalid expression in '{key}': {reason}")


def _expression_reason(exc: ExpressionError) -> str:
    if exc.column is None:
        return exc.reason
    if exc.line and exc.line > 1:
        return f"{exc.reason} (expression line {exc.line}, column {exc.column})"
    return f"{exc.reason} (column {exc.column})"


def _inner_line(item: LocatedMap, key: str, inner: int | None) -> int:
    """The file line of line ``inner`` (1-based) of a scalar value."""
    line = item.line_of(key)
    style = item.value_styles.get(key)
    if inner is None:
        return line
    if style == "|":  # literal block: content starts on the line after the indicator
        return line + inner
    if style == ">":  # folded block: line breaks are gone, point at the first content line
        return line + 1
    return line


def _channels(ctx: _Context, item: LocatedMap, key: str) -> tuple[str, ...]:
    value = item.get(key)
    line = item.line_of(key)
    if key not in item:
        return ()
    if not isinstance(value, list) or not value:
        ctx.error(line, f"'{key}' must be a non-empty list of channel names, e.g. [inbox, email]")
        return ()
    names: list[str] = []
    for name in value:
        if _channel_ok(ctx, line, key, name, names):
            names.append(name)
    return tuple(names)


def _channel_ok(ctx: _Context, line: int, key: str, name: Any, seen: Sequence[str]) -> bool:
    if not isinstance(name, str) or not CHANNEL_PATTERN.fullmatch(name):
        ctx.error(line, f"channel name {name!r} in '{key}' must match {CHANNEL_PATTERN.pattern}")
        return False
    if name in seen:
        ctx.error(line, f"channel {name!r} listed twice in '{key}'")
        return False
    known = ctx.known_channels
    if known is not None and name not in known:
        ctx.error(line, f"unknown channel {name!r} (known: {', '.join(sorted(known))})")
        return False
    return True


def _priority(ctx: _Context, item: LocatedMap) -> int:
    value = item.get("priority", DEFAULT_PRIORITY)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        ctx.error(item.line_of("priority"), f"'priority' must be an integer from 0 to 9, got {value!r}")
        return DEFAULT_PRIORITY
    return value


def _category(ctx: _Context, item: LocatedMap) -> str:
    known = ctx.categories
    value = _text(ctx, item, "category", default=known.default)
    if value and value not in known.names:
        ctx.error(item.line_of("category"), f"unknown category {value!r} (known: {', '.join(known.names)})")
    return value


def _dedup_key(ctx: _Context, item: LocatedMap) -> str:
    source = _text(ctx, item, "dedup_key", default=DEFAULT_DEDUP_KEY)
    try:
        parse_dedup_key(source, TRIGGER_FACT)
    except ExpressionError as exc:
        ctx.error(item.line_of("dedup_key"), f"invalid 'dedup_key': {exc.reason}")
    return source


def _delay(ctx: _Context, item: LocatedMap) -> int:
    if "delay" not in item:
        return 0
    try:
        delay_ms = parse_duration(item["delay"])
    except DurationError as exc:
        ctx.error(item.line_of("delay"), f"'delay' {exc}")
        return 0
    if delay_ms > ctx.max_delay_ms:
        limit = format_duration(ctx.max_delay_ms)
        ctx.error(
            item.line_of("delay"),
            f"'delay' {item['delay']} is over the limit of {limit} ({RuleLimits.DELAY_SETTING})",
        )
    return delay_ms


def _cancel_if(ctx: _Context, item: LocatedMap) -> str:
    if "cancel_if" not in item:
        return ""
    if "delay" not in item:
        # Without a delay the message is sent while the event is planned: no later event can
        # reach it, and a cancel_if that never cancels anything would mislead its reader.
        ctx.error(item.line_of("cancel_if"), "'cancel_if' needs a 'delay' (e.g. delay: 30m)")
    return _expression(ctx, item, "cancel_if", TRIGGER_FACT)


def _template_source(ctx: _Context, body: LocatedMap, key: str, required: bool) -> str:
    source = _text(ctx, body, key, required=required)
    try:
        compile_source(source, html=key == "html")
    except jinja2.TemplateSyntaxError as exc:
        ctx.error(_inner_line(body, key, exc.lineno), f"template syntax error in '{key}': {exc.message}")
    return source


# --- checks across files ----------------------------------------------------------


def _check_duplicates(entries: Iterable[_Entry], problems: _Problems) -> None:
    first: dict[str, _Entry] = {}
    for entry in entries:
        seen = first.setdefault(entry.id, entry)
        if seen is not entry:
            problems.add(
                entry.path,
                entry.line,
                f"duplicate id {entry.id!r} (first defined at {seen.path}:{seen.line})",
            )


def _check_template_refs(
    refs: Iterable[tuple[str, str, int]], known: Collection[str], problems: _Problems
) -> None:
    for name, path, line in refs:
        if name not in known:
            listing = ", ".join(sorted(known)) or "none"
            problems.add(path, line, f"unknown template {name!r} (known: {listing})")


def _check_fallback_cycles(templates: Sequence[_Entry], problems: _Problems) -> None:
    by_id = {entry.value.id: entry for entry in templates}
    for entry in templates:
        seen, current = [entry.value.id], _next_in_chain(entry.value)
        while current in by_id and current != SKIP:
            if current in seen:
                chain = " -> ".join([*seen, current])
                problems.add(entry.path, entry.line, f"template fallbacks loop: {chain}")
                break
            seen.append(current)
            current = _next_in_chain(by_id[current].value)


def _next_in_chain(template: Template) -> str:
    """The template an older app gets on the same channel; a channel fallback ends the chain."""
    return "" if template.fallback_channel else template.fallback


def _check_channel_fallbacks(templates: Sequence[_Entry], problems: _Problems) -> None:
    """A channel fallback's template is shown as it is on that channel: it may not fall back
    to yet another channel (a message moves between channels once)."""
    by_id = {entry.value.id: entry.value for entry in templates}
    for entry in templates:
        target = by_id.get(entry.value.fallback) if entry.value.fallback_channel else None
        if (
            target is not None
            and target.fallback_channel
            and target.fallback_channel != entry.value.fallback_channel
        ):
            problems.add(
                entry.path,
                entry.line,
                f"fallback template {target.id!r} falls back to channel {target.fallback_channel!r} itself; "
                "a message moves to another channel once",
            )


def _event_conditions(triggers: Sequence[_Entry]) -> list[tuple[Condition, _Entry]]:
    """The conditions of the events' rule set, in the engine's order (every ``when``,
    then every ``cancel_if``: see :func:`rules.engine.event_conditions`)."""
    whens = [(entry.value.condition, entry) for entry in triggers]
    cancels = [(e.value.cancel_condition, e) for e in triggers if e.value.cancel_condition is not None]
    return whens + cancels


def _check_capacity(
    pairs: Sequence[tuple[Condition, _Entry]], schema: FactSchema, problems: _Problems
) -> None:
    if not pairs:
        return
    conditions = [condition for condition, _ in pairs]
    # Grouped by file, so that a problem is blamed on the file that contributes most to it
    # (a big new file, not the last rule of whichever file happens to sort last).
    for problem in check_capacity(conditions, schema, groups=[entry.path for _, entry in pairs]):
        blamed = pairs[problem.rule_index][1]
        problems.add(blamed.path, blamed.line, problem.reason)


def _hint(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(choices)})"


def _type_name(value: Any) -> str:
    names = {type(None): "nothing", bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    if isinstance(value, dict):
        return "a mapping"
    return names.get(type(value), type(value).__name__)
