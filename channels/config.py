"""The channels file: which providers serve each channel, their weights and limits.

Shape (``deploy/config/channels.yaml``)::

    channels:
      email:
        window_seconds: 60          # tumbling throttle window
        limit_per_window: 6000      # whole channel, per window; omit = unlimited
        max_content_bytes: 1000000  # rendered title + text + html (UTF-8); omit = the
                                    # smallest default of the channel's provider types
        platform: ios               # only for a channel one platform's app shows (an APNs
                                    # push): content is chosen for that app's version
        providers:
          - name: smtp-primary      # unique within the channel
            type: smtp              # a key of channels.registry.PROVIDERS
            weight: 70              # share of traffic; default 1
            limit_per_window: 4000  # this provider, per window; omit = only the channel's
            options: {host: ..., password: "${REACH_SMTP_PASSWORD}"}

``${NAME}`` inside option strings is replaced from the ``env`` mapping the
caller passes, ``${NAME:-default}`` falls back to ``default`` when ``NAME`` is
unset or empty, and ``$$`` is a literal ``$``. This module never reads the
process environment: the entry point decides what a provider may see.

Every problem raises :class:`ChannelsConfigError` naming the file, the line,
and the channel and provider concerned. Loading builds new immutable objects,
so a reload that fails leaves the previous configuration untouched.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import Any

import yaml

from channels.base import ProviderConfig
from channels.registry import known_types, provider_class

MASK = "****"
#: option keys containing one of these are masked whatever the provider declares
SECRET_KEY_PARTS = ("password", "secret", "token", "key")

_CHANNELS_KEYS = frozenset({"channels"})
_CHANNEL_KEYS = frozenset(
    {"window_seconds", "limit_per_window", "max_content_bytes", "platform", "providers"}
)
_PLATFORM = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_PROVIDER_KEYS = frozenset({"name", "type", "weight", "limit_per_window", "options"})
_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


class ChannelsConfigError(ValueError):
    """The channels file is unreadable or invalid; the message says where and why."""

    def __init__(self, source: str, reason: str, line: int | None = None) -> None:
        self.source = source
        self.line = line
        self.reason = reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelConfig:
    name: str
    window_seconds: float  # length of the tumbling throttle window
    limit_per_window: int | None  # sends per window for the whole channel; None = unlimited
    providers: tuple[ProviderConfig, ...]  # at least one, names unique
    #: rendered content (title + text + html, UTF-8 bytes) above this fails as content_too_large
    max_content_bytes: int = 256 * 1024
    #: the platform whose app shows this channel's messages (``ios`` for APNs); "" for a
    #: channel any app shows (inbox, pop-ups) or none does (e-mail, SMS)
    platform: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelsConfig:
    channels: Mapping[str, ChannelConfig]


def load_channels(path: str | os.PathLike[str], env: Mapping[str, str]) -> ChannelsConfig:
    """Read and validate the channels file at ``path``.

    Raises :class:`ChannelsConfigError` for an unreadable file, bad YAML, a
    missing ``${VAR}`` or any invalid entry.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ChannelsConfigError(source, f"cannot read: {exc.strerror}") from exc
    return parse_channels(text, env, source=source)


def parse_channels(text: str, env: Mapping[str, str], source: str = "<string>") -> ChannelsConfig:
    """Validate channels YAML held in memory; ``source`` names it in errors."""
    document = _Document(source, env)
    return document.build(_load_yaml(text, source))


class VariableError(ValueError):
    """A ``${VAR}`` reference that cannot be expanded."""


def expand_variables(text: str, env: Mapping[str, str]) -> str:
    """``${NAME}`` from ``env``, ``${NAME:-default}`` when unset or empty, ``$$`` for ``$``.

    Raises :class:`VariableError` for an unset variable or a malformed reference.
    """

    def replace(match: re.Match[str]) -> str:
        token, variable, default = match.group(0, 1, 2)
        if token == "$$":
            return "$"
        if variable is None:
            raise VariableError("malformed variable reference: use ${NAME} or $$ for '$'")
        value = env.get(variable)
        if default is not None and not value:
            return default
        if value is None:
            raise VariableError(f"environment variable {variable} is not set")
        return value

    return _VARIABLE.sub(replace, text)


def masked(config: ChannelsConfig) -> dict[str, Any]:
    """A plain-data copy of ``config`` for listings, with every secret option as ``"****"``.

    Secrets are the keys the provider class declares in ``secret_options`` plus
    any key containing one of :data:`SECRET_KEY_PARTS`, at any depth.
    """
    return {"channels": {name: _masked_channel(channel) for name, channel in config.channels.items()}}


# --- YAML with line numbers -------------------------------------------------------------------


class _Node(dict[Any, Any]):
    """A YAML mapping that remembers the line it started on, for error messages."""

    line: int | None = None


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Node:
    loader.flatten_mapping(node)
    result = _Node()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(None, None, "unhashable mapping key", key_node.start_mark)
        if key in result:
            # PyYAML keeps the last duplicate silently; a repeated channel name would vanish.
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        result[key] = loader.construct_object(value_node)
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ChannelsConfigError(source, f"invalid YAML: {exc.problem}", line) from exc
    except yaml.YAMLError as exc:
        raise ChannelsConfigError(source, f"invalid YAML: {exc}") from exc


# --- validation -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Document:
    source: str
    env: Mapping[str, str]

    def fail(self, node: Any, where: str, reason: str) -> ChannelsConfigError:
        line = node.line if isinstance(node, _Node) else None
        return ChannelsConfigError(self.source, f"{where}: {reason}" if where else reason, line)

    def build(self, root: Any) -> ChannelsConfig:
        if not isinstance(root, dict):
            raise self.fail(root, "", "expected a mapping with a 'channels' key")
        self.check_keys(root, _CHANNELS_KEYS, "")
        channels = root.get("channels")
        if not isinstance(channels, dict) or not channels:
            raise self.fail(root, "", "'channels' must be a non-empty mapping of channel name -> channel")
        built = {name: self.channel(name, body, channels) for name, body in channels.items()}
        return ChannelsConfig(MappingProxyType(built))

    def channel(self, name: Any, body: Any, parent: Any) -> ChannelConfig:
        if not isinstance(name, str) or not name:
            raise self.fail(parent, "", f"channel names must be non-empty strings, got {name!r}")
        where = f"channel {name!r}"
        if not isinstance(body, dict):
            raise self.fail(parent, where, "expected a mapping")
        self.check_keys(body, _CHANNEL_KEYS, where)
        window: Any = body.get("window_seconds")
        if not _is_number(window) or not math.isfinite(window) or window <= 0:
            raise self.fail(body, where, f"window_seconds must be a number > 0, got {window!r}")
        limit = self.limit(body, where)
        providers = self.providers(body.get("providers"), body, where)
        max_content = self.max_content(body, where, providers)
        return ChannelConfig(name, float(window), limit, providers, max_content, self.platform(body, where))

    def platform(self, body: dict[str, Any], where: str) -> str:
        value = body.get("platform", "")
        if not isinstance(value, str) or (value and not _PLATFORM.fullmatch(value)):
            raise self.fail(
                body, where, f"platform must be a lower-case platform name such as ios, got {value!r}"
            )
        return value

    def max_content(self, body: dict[str, Any], where: str, providers: tuple[ProviderConfig, ...]) -> int:
        value = body.get("max_content_bytes")
        if value is None:
            return default_max_content_bytes(providers)
        if not _is_int(value) or value <= 0:
            raise self.fail(
                body, where, f"max_content_bytes must be a positive integer or omitted, got {value!r}"
            )
        return int(value)

    def providers(self, items: Any, channel: Any, where: str) -> tuple[ProviderConfig, ...]:
        if not isinstance(items, list) or not items:
            raise self.fail(channel, where, "'providers' must be a non-empty list")
        built = tuple(self.provider(index, item, channel, where) for index, item in enumerate(items))
        names = [provider.name for provider in built]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise self.fail(items[index], f"{where}, provider {name!r}", "duplicate provider name")
        return built

    def provider(self, index: int, body: Any, channel: Any, channel_where: str) -> ProviderConfig:
        if not isinstance(body, dict):
            raise self.fail(channel, f"{channel_where}, provider #{index + 1}", "expected a mapping")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            where = f"{channel_where}, provider #{index + 1}"
            raise self.fail(body, where, "'name' must be a non-empty string")
        where = f"{channel_where}, provider {name!r}"
        self.check_keys(body, _PROVIDER_KEYS, where)
        type_name = body.get("type")
        if type_name not in known_types():
            raise self.fail(
                body, where, f"unknown provider type {type_name!r}; known types: {', '.join(known_types())}"
            )
        weight = body.get("weight", 1)
        if not _is_int(weight) or weight <= 0:
            raise self.fail(body, where, f"weight must be a positive integer, got {weight!r}")
        options = body.get("options", {})
        if not isinstance(options, dict):
            raise self.fail(body, where, "'options' must be a mapping")
        frozen = _freeze(self.substitute(options, body, where))
        return ProviderConfig(name, type_name, weight, self.limit(body, where), frozen)

    def limit(self, body: dict[str, Any], where: str) -> int | None:
        limit = body.get("limit_per_window")
        if limit is not None and (not _is_int(limit) or limit <= 0):
            reason = f"limit_per_window must be a positive integer or omitted, got {limit!r}"
            raise self.fail(body, where, reason)
        return limit

    def check_keys(self, body: dict[str, Any], allowed: frozenset[str], where: str) -> None:
        unknown = sorted(str(key) for key in body if key not in allowed)
        if unknown:
            expected = ", ".join(sorted(allowed))
            raise self.fail(body, where, f"unknown key(s) {', '.join(unknown)}; expected: {expected}")

    def substitute(self, value: Any, node: Any, where: str) -> Any:
        if isinstance(value, str):
            return self.expand(value, node, where)
        if isinstance(value, dict):
            return {key: self.substitute(item, value, where) for key, item in value.items()}
        if isinstance(value, list):
            return [self.substitute(item, node, where) for item in value]
        return value

    def expand(self, text: str, node: Any, where: str) -> str:
        try:
            return expand_variables(text, self.env)
        except VariableError as exc:
            raise self.fail(node, where, str(exc)) from None


def default_max_content_bytes(providers: tuple[ProviderConfig, ...]) -> int:
    """The strictest content limit the channel's provider types declare."""
    return min(provider_class(p.type).max_content_bytes for p in providers)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _freeze(value: Any) -> Any:
    """Read-only copies of nested option data, so a shared config cannot be mutated."""
    if isinstance(value, dict):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(item) for item in value)
    return value


# --- masking ----------------------------------------------------------------------------------


def _masked_channel(channel: ChannelConfig) -> dict[str, Any]:
    return {
        "window_seconds": channel.window_seconds,
        "limit_per_window": channel.limit_per_window,
        "max_content_bytes": channel.max_content_bytes,
        "platform": channel.platform,
        "providers": [_masked_provider(provider) for provider in channel.providers],
    }


def _masked_provider(provider: ProviderConfig) -> dict[str, Any]:
    declared = provider_class(provider.type).secret_options
    return {
        "name": provider.name,
        "type": provider.type,
        "weight": provider.weight,
        "limit_per_window": provider.limit_per_window,
        "options": _mask(provider.options, lambda key: key in declared or _looks_secret(key)),
    }


def _mask(value: Any, is_secret: Callable[[str], bool]) -> Any:
    if isinstance(value, Mapping):
        return {
            key: MASK if is_secret(str(key)) else _mask(item, _looks_secret) for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_mask(item, _looks_secret) for item in value]
    return value


def _looks_secret(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)
