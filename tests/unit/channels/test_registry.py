from __future__ import annotations

import importlib

import pytest

from channels.base import Provider
from channels.email_smtp import SmtpProvider
from channels.registry import PROVIDERS, UnknownProviderError, known_types, provider_class

EXPECTED = {
    "inbox", "popup", "smtp", "aliyun_sms", "tencent_sms", "twilio_sms", "fcm", "apns",
    "wechat_template", "feishu_bot", "dingtalk_bot", "webhook",
}  # fmt: skip


def test_known_types_are_the_registered_names_sorted() -> None:
    assert known_types() == tuple(sorted(PROVIDERS))
    assert set(known_types()) <= EXPECTED


def test_provider_class_imports_the_registered_class() -> None:
    assert provider_class("smtp") is SmtpProvider


def test_unknown_type_is_a_value_error_listing_the_known_ones() -> None:
    with pytest.raises(UnknownProviderError) as caught:
        provider_class("carrier-pigeon")
    assert isinstance(caught.value, ValueError)
    assert "'carrier-pigeon'" in str(caught.value)
    assert f"known types: {', '.join(known_types())}" in str(caught.value)
    assert caught.value.known == known_types()


def test_registry_cannot_be_mutated_at_run_time() -> None:
    with pytest.raises(TypeError):
        PROVIDERS["x"] = "y:Z"  # type: ignore[index]


@pytest.mark.parametrize("type_name", sorted(PROVIDERS))
def test_each_entry_names_a_provider_whose_type_name_is_its_key(type_name: str) -> None:
    module_name = PROVIDERS[type_name].partition(":")[0]
    importlib.import_module(module_name)
    cls = provider_class(type_name)
    assert issubclass(cls, Provider)
    assert cls.type_name == type_name
