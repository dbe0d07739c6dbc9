"""Provider type name -> implementing class, as an explicit map.

The channels file names a provider by its type (``type: smtp``); this module
turns that name into the class. The map is written out rather than discovered
so that a reader sees every provider in one place, and classes are imported
only when asked for, so a worker that sends e-mail never imports the SDKs of
providers it does not use.

Adding a provider is one module plus one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType

from channels.base import Provider

PROVIDERS: Mapping[str, str] = MappingProxyType(
    {
        "aliyun_sms": "channels.sms_aliyun:AliyunSmsProvider",
        "apns": "channels.push_apns:ApnsProvider",
        "dingtalk_bot": "channels.bot_dingtalk:DingtalkBotProvider",
        "fcm": "channels.push_fcm:FcmProvider",
        "feishu_bot": "channels.bot_feishu:FeishuBotProvider",
        "inbox": "channels.inbox:InboxProvider",
        "popup": "channels.popup:PopupProvider",
        "smtp": "channels.email_smtp:SmtpProvider",
        "tencent_sms": "channels.sms_tencent:TencentSmsProvider",
        "twilio_sms": "channels.sms_twilio:TwilioSmsProvider",
        "webhook": "channels.webhook:WebhookProvider",
        "wechat_template": "channels.wechat:WechatTemplateProvider",
    }
)


class UnknownProviderError(ValueError):
    """The channels file names a provider type that is not in :data:`PROVIDERS`."""

    def __init__(self, type_name: str, known: tuple[str, ...]) -> None:
        self.type_name = type_name
        self.known = known
        super().__init__(f"unknown provider type {type_name!r}; known types: {', '.join(known)}")


def known_types() -> tuple[str, ...]:
    """The registered provider type names, sorted."""
    return tuple(sorted(PROVIDERS))


def provider_class(type_name: str) -> type[Provider]:
    """Import and return the class registered as ``type_name``.

    Raises :class:`UnknownProviderError` (a ``ValueError``) listing the known
    names when ``type_name`` is not registered; an ``ImportError`` from the
    provider's module propagates unchanged, since it means a broken install.
    """
    try:
        target = PROVIDERS[type_name]
    except KeyError:
        raise UnknownProviderError(type_name, known_types()) from None
    return _load(target)


def _load(target: str) -> type[Provider]:
    module_name, _, attribute = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attribute)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{target} is not a channels.base.Provider subclass")
    return cls
