"""Which providers accept delivery receipts, and the secret that authenticates each.

Read from the channels file (``settings.channels_file``), tolerantly: the API
needs only each provider entry's ``name``, ``type``, channel and receipt
options, so it neither imports provider classes nor validates the rest (the
worker does that), and ``${VAR}`` references are expanded only in the options
read here. A channels file the worker accepts is always accepted here.

================  =====================  ==========================================
provider type     option                 what it is
================  =====================  ==========================================
``twilio_sms``    ``auth_token``         the account auth token Twilio signs with
                  ``webhook_shared_keys``  optional: SharedKey id -> secret, for
                                         requests a Twilio Webhook Setting signs
                                         (HMAC-SHA256 or -SHA1 under the key that
                                         ``X-Twilio-Webhooks-Signature-Settings``
                                         names); two entries while rotating
                  ``receipt_url``        optional: the public URL Twilio calls, up
                                         to the path (the request's query string
                                         is appended), when the API sits behind a
                                         proxy that changes the URL it sees
                  ``inbound_url``        the same for ``/v1/inbound/<name>``
``aliyun_sms``    ``receipt_token``      a random token the operator puts in the
``tencent_sms``                          callback URL: ``?token=<receipt_token>``
``webhook``       ``secret``             the provider's signing secret (X-Reach-Signature)
================  =====================  ==========================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import SecretStr

from channels.config import ChannelsConfigError, VariableError, expand_variables

#: provider type -> the option holding the secret its callbacks are checked with
SECRET_OPTION: Mapping[str, str] = MappingProxyType(
    {
        "twilio_sms": "auth_token",
        "aliyun_sms": "receipt_token",
        "tencent_sms": "receipt_token",
        "webhook": "secret",
    }
)
URL_OPTION = "receipt_url"
INBOUND_URL_OPTION = "inbound_url"
SHARED_KEYS_OPTION = "webhook_shared_keys"
NO_KEYS: Mapping[str, SecretStr] = MappingProxyType({})


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptEndpoint:
    """One provider entry that can receive receipts at ``POST /v1/receipts/{name}``."""

    name: str
    type: str  # a key of SECRET_OPTION
    channel: str
    secret: SecretStr | None  # None: not configured, every callback is refused
    public_url: str | None = None  # twilio_sms: the URL Twilio calls (no query), when not the request's
    shared_keys: Mapping[str, SecretStr] = dataclasses.field(default_factory=lambda: NO_KEYS)  # twilio_sms
    inbound_url: str | None = None  # twilio_sms: public_url of /v1/inbound/<name>


def load_endpoints(path: str | os.PathLike[str], env: Mapping[str, str]) -> Mapping[str, ReceiptEndpoint]:
    """Provider name -> endpoint, for every entry of a receipt-capable type.

    Raises :class:`ChannelsConfigError` when the file is unreadable or not YAML,
    when a ``${VAR}`` in a receipt option is unset, or when two receipt-capable
    entries of different channels share a name (the URL could not tell them apart).
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ChannelsConfigError(source, f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ChannelsConfigError(source, f"invalid YAML: {exc}") from exc
    endpoints: dict[str, ReceiptEndpoint] = {}
    for endpoint in _endpoints(document, env, source):
        if endpoint.name in endpoints:
            reason = f"provider name {endpoint.name!r} is used twice; receipt URLs need unique names"
            raise ChannelsConfigError(source, reason)
        endpoints[endpoint.name] = endpoint
    return MappingProxyType(endpoints)


def _endpoints(document: Any, env: Mapping[str, str], source: str) -> list[ReceiptEndpoint]:
    channels = document.get("channels") if isinstance(document, dict) else None
    found = []
    for channel, body in (channels or {}).items() if isinstance(channels, dict) else ():
        providers = body.get("providers") if isinstance(body, dict) else None
        for entry in providers if isinstance(providers, list) else ():
            if isinstance(entry, dict) and entry.get("type") in SECRET_OPTION and entry.get("name"):
                found.append(_endpoint(str(channel), entry, env, source))
    return found


def _endpoint(channel: str, entry: dict[str, Any], env: Mapping[str, str], source: str) -> ReceiptEndpoint:
    name, type_name = str(entry["name"]), str(entry["type"])
    options = entry.get("options")
    options = options if isinstance(options, dict) else {}
    where = f"channel {channel!r}, provider {name!r}"
    secret = _option(options, SECRET_OPTION[type_name], env, source, where)
    endpoint = ReceiptEndpoint(name, type_name, channel, SecretStr(secret) if secret else None)
    if type_name != "twilio_sms":
        return endpoint
    return dataclasses.replace(
        endpoint,
        public_url=_option(options, URL_OPTION, env, source, where) or None,
        shared_keys=_shared_keys(options, env, source, where),
        inbound_url=_option(options, INBOUND_URL_OPTION, env, source, where) or None,
    )


def _shared_keys(
    options: dict[str, Any], env: Mapping[str, str], source: str, where: str
) -> Mapping[str, SecretStr]:
    keys = options.get(SHARED_KEYS_OPTION)
    if keys is None:
        return NO_KEYS
    if not isinstance(keys, dict) or not all(isinstance(k, str) and k for k in keys):
        reason = f"{where}: option {SHARED_KEYS_OPTION!r} must map SharedKey ids to secrets"
        raise ChannelsConfigError(source, reason)
    secrets = {key: _option(keys, key, env, source, f"{where}, {SHARED_KEYS_OPTION}") for key in keys}
    return MappingProxyType({key: SecretStr(value) for key, value in secrets.items() if value})


def _option(options: dict[str, Any], key: str, env: Mapping[str, str], source: str, where: str) -> str:
    value = options.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ChannelsConfigError(source, f"{where}: option {key!r} must be a string")
    return expand(value, env, source, f"{where}, option {key!r}")


def expand(text: str, env: Mapping[str, str], source: str, where: str) -> str:
    """``${NAME}``, ``${NAME:-default}`` and ``$$`` as in :mod:`channels.config`."""
    try:
        return expand_variables(text, env)
    except VariableError as exc:
        raise ChannelsConfigError(source, f"{where}: {exc}") from None
