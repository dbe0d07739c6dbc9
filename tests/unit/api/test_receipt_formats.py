"""Receipt callback formats and the receipt configuration, without services."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import MappingProxyType

import orjson
import pytest
from pydantic import SecretStr

from api.receipt_config import ReceiptEndpoint, load_endpoints
from api.receipt_formats import FORMATS, Callback, Rejected, twilio_signature
from channels.config import ChannelsConfigError
from models.receipts import ReceiptStatus, same_number

# Known answers from twilio-python's own request-validator tests (auth token "12345").
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Digits": ["1234"],
    "From": ["+14158675309"],
    "To": ["+18005551212"],
    "Caller": ["+14158675309"],
}


def endpoint(type_name: str, secret: str) -> ReceiptEndpoint:
    return ReceiptEndpoint("p", type_name, "sms", SecretStr(secret))


SHARED_KEY_ID, SHARED_SECRET = "webhooks_sharedkey_01abc", "shared-key-secret"
SHA256_SETTINGS = {"x-twilio-webhooks-signature-settings": f"key={SHARED_KEY_ID},algorithm=HMAC_SHA256"}


def twilio_endpoint(auth_token: str | None = "tok") -> ReceiptEndpoint:
    keys = MappingProxyType({SHARED_KEY_ID: SecretStr(SHARED_SECRET)})
    return ReceiptEndpoint("p", "twilio_sms", "sms", auth_token and SecretStr(auth_token), shared_keys=keys)


def status_callback(headers: dict[str, str], key: str, digest: object = hashlib.sha1) -> Callback:
    url = "https://reach.example/v1/receipts/p"
    params = {"MessageSid": ["SM1"], "MessageStatus": ["delivered"]}
    signature = twilio_signature(key, url, params, digest)  # type: ignore[arg-type]
    body = b"MessageSid=SM1&MessageStatus=delivered"
    return Callback(url, {"x-twilio-signature": signature, **headers}, {}, body, 0)


def test_twilio_signature_matches_twilios_known_answers() -> None:
    assert twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234"]}
    assert twilio_signature("12345", TWILIO_URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def test_twilio_sha256_signature_matches_twilio_pythons_validator() -> None:
    # twilio 9.13.0: RequestValidator("12345").compute_signature(url, params, "HMAC_SHA256")
    expected = "033hgUJA9M/hXIZsYjwkerEP/DBm35nEri5FhCYjA5s="
    assert twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS, hashlib.sha256) == expected


def test_twilio_accepts_both_schemes_each_under_its_own_key() -> None:
    fmt = FORMATS["twilio_sms"]
    [legacy] = fmt.receipts(twilio_endpoint(), status_callback({}, "tok"))
    [shared] = fmt.receipts(
        twilio_endpoint(), status_callback(SHA256_SETTINGS, SHARED_SECRET, hashlib.sha256)
    )
    assert legacy.status is shared.status is ReceiptStatus.DELIVERED
    sha1_settings = {"x-twilio-webhooks-signature-settings": f"algorithm=hmac_sha1, key={SHARED_KEY_ID}"}
    assert fmt.receipts(twilio_endpoint(None), status_callback(sha1_settings, SHARED_SECRET))


@pytest.mark.parametrize(
    ("headers", "key", "digest", "reason"),
    [
        (SHA256_SETTINGS, "tok", hashlib.sha256, "bad_signature"),  # the auth token never signs this scheme
        (SHA256_SETTINGS, SHARED_SECRET, hashlib.sha1, "bad_signature"),  # the hash the header names
        ({}, SHARED_SECRET, hashlib.sha256, "bad_signature"),  # header dropped: back to SHA-1 + auth token
        ({}, SHARED_SECRET, hashlib.sha1, "bad_signature"),
        (
            {"x-twilio-webhooks-signature-settings": f"key={SHARED_KEY_ID},algorithm=HMAC_SHA512"},
            SHARED_SECRET,
            hashlib.sha512,
            "bad_algorithm",
        ),
        (
            {"x-twilio-webhooks-signature-settings": "key=webhooks_sharedkey_other,algorithm=HMAC_SHA256"},
            SHARED_SECRET,
            hashlib.sha256,
            "unknown_key",
        ),
    ],
)
def test_twilio_refuses_what_its_scheme_does_not_sign(
    headers: dict[str, str], key: str, digest: object, reason: str
) -> None:
    with pytest.raises(Rejected) as refused:
        FORMATS["twilio_sms"].receipts(twilio_endpoint(), status_callback(headers, key, digest))
    assert (refused.value.status, refused.value.reason) == (403, reason)


def test_twilio_shared_key_scheme_without_keys_is_not_configured() -> None:
    bare = endpoint("twilio_sms", "tok")
    with pytest.raises(Rejected) as refused:
        FORMATS["twilio_sms"].receipts(bare, status_callback(SHA256_SETTINGS, SHARED_SECRET, hashlib.sha256))
    assert (refused.value.status, refused.value.reason) == (403, "not_configured")


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        (TWILIO_URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),  # signed without the port
        (TWILIO_URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
        (TWILIO_URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # signed with :80
    ],
)
def test_twilio_signatures_with_or_without_the_port_are_accepted(url: str, signature: str) -> None:
    body = "&".join(f"{k}={v[0]}" for k, v in TWILIO_PARAMS.items()).replace("+", "%2B").encode()
    callback = Callback(url, {"x-twilio-signature": signature}, {}, body, 0)
    with pytest.raises(Rejected) as refused:  # authentic, but not a status callback
        FORMATS["twilio_sms"].receipts(endpoint("twilio_sms", "12345"), callback)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("delivered", ReceiptStatus.DELIVERED),
        ("read", ReceiptStatus.DELIVERED),
        ("undelivered", ReceiptStatus.FAILED),
        ("failed", ReceiptStatus.FAILED),
        ("queued", ReceiptStatus.PROGRESS),
        ("sent", ReceiptStatus.PROGRESS),
        ("some_future_status", ReceiptStatus.PROGRESS),
    ],
)
def test_twilio_statuses_map_onto_receipt_statuses(word: str, status: ReceiptStatus) -> None:
    url = "https://reach.example/v1/receipts/p?message_id=m-1"
    params = {"MessageSid": ["SM1"], "MessageStatus": [word], "ErrorCode": ["30003"]}
    body = f"MessageSid=SM1&MessageStatus={word}&ErrorCode=30003".encode()
    headers = {"x-twilio-signature": twilio_signature("tok", url, params)}
    callback = Callback(url, headers, {"message_id": "m-1"}, body, 0)
    [receipt] = FORMATS["twilio_sms"].receipts(endpoint("twilio_sms", "tok"), callback)
    assert (receipt.status, receipt.provider_message_id, receipt.message_id) == (status, "SM1", "m-1")
    assert receipt.error_code == ("30003" if status is ReceiptStatus.FAILED else "")


def test_aliyun_items_keep_both_ids_and_the_recipient_digits() -> None:
    item = {
        "biz_id": "B1",
        "out_id": "m1",
        "success": "false",
        "err_code": "MK:0001",
        "phone_number": "+86 138-0000",
    }
    [receipt] = FORMATS["aliyun_sms"].parse([item])
    assert (receipt.status, receipt.provider_message_id, receipt.message_id) == (
        ReceiptStatus.FAILED,
        "B1",
        "m1",
    )
    assert (receipt.error_code, receipt.recipient) == ("MK:0001", "861380000")


def test_token_callbacks_need_the_exact_token() -> None:
    body = orjson.dumps([{"sid": "s1", "report_status": "SUCCESS"}])
    fmt, configured = FORMATS["tencent_sms"], endpoint("tencent_sms", "tok")
    [receipt] = fmt.receipts(configured, Callback("u", {}, {"token": "tok"}, body, 0))
    assert receipt.status is ReceiptStatus.DELIVERED
    for query in ({"token": "to"}, {"token": "tok "}, {}):
        with pytest.raises(Rejected) as refused:
            fmt.receipts(configured, Callback("u", {}, query, body, 0))
        assert (refused.value.status, refused.value.reason) == (403, "bad_token")


def test_same_number_allows_a_missing_country_code_only() -> None:
    assert same_number("8613800000001", "13800000001")
    assert not same_number("8613800000001", "13800000002")
    assert not same_number("0001", "10001")  # too short to tell


def test_config_reads_only_receipt_providers_and_their_options(tmp_path: Path) -> None:
    path = tmp_path / "channels.yaml"
    path.write_text(
        """
channels:
  sms:
    window_seconds: 1
    providers:
      - name: tw
        type: twilio_sms
        options:
          auth_token: "${TW}"
          receipt_url: "https://x/v1/receipts/tw"
          inbound_url: "https://x/v1/inbound/tw"
          webhook_shared_keys: {webhooks_sharedkey_new: "${NEW_KEY}", webhooks_sharedkey_old: old}
      - {name: ali, type: aliyun_sms, options: {receipt_token: "${ALI:-fallback}"}}
      - {name: bare, type: tencent_sms}
  email:
    window_seconds: 1
    providers:
      - {name: smtp, type: smtp, options: {password: "${NOT_SET}"}}
"""
    )
    endpoints = load_endpoints(path, {"TW": "secret", "NEW_KEY": "new"})
    assert sorted(endpoints) == ["ali", "bare", "tw"]
    assert endpoints["tw"].secret is not None and endpoints["tw"].secret.get_secret_value() == "secret"
    assert endpoints["tw"].public_url == "https://x/v1/receipts/tw"
    assert endpoints["tw"].inbound_url == "https://x/v1/inbound/tw"
    keys = {k: v.get_secret_value() for k, v in endpoints["tw"].shared_keys.items()}
    assert keys == {"webhooks_sharedkey_new": "new", "webhooks_sharedkey_old": "old"}
    assert endpoints["ali"].secret is not None and endpoints["ali"].secret.get_secret_value() == "fallback"
    assert endpoints["bare"].secret is None and endpoints["bare"].channel == "sms"


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "channels.yaml"
    path.write_text("channels: {a: {providers: [{name: p, type: webhook, options: {secret: '${MISSING}'}}]}}")
    with pytest.raises(ChannelsConfigError, match="MISSING is not set"):
        load_endpoints(path, {})
    path.write_text(
        "channels: {a: {providers: [{name: p, type: webhook}]}, "
        "b: {providers: [{name: p, type: tencent_sms}]}}"
    )
    with pytest.raises(ChannelsConfigError, match="'p' is used twice"):
        load_endpoints(path, {})
    path.write_text(
        "channels: {a: {providers: [{name: p, type: twilio_sms, options: {webhook_shared_keys: k}}]}}"
    )
    with pytest.raises(ChannelsConfigError, match="must map SharedKey ids to secrets"):
        load_endpoints(path, {})
    with pytest.raises(ChannelsConfigError, match="cannot read"):
        load_endpoints(tmp_path / "missing.yaml", {})
