"""Tests of webhook signing, checked by the independent ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay.events import build_body
from relay.settings import Secret
from relay.signing import generate_secret, headers, sign

WEBHOOK_ID = "msg_2bV9xQkP0aLmN3sT"
OLD_SECRET = generate_secret()
NEW_SECRET = generate_secret()


def signed(
    body: bytes, secrets_: tuple[str, ...] = (OLD_SECRET,)
) -> tuple[dict[str, str], int]:
    timestamp_s = int(time.time())
    values = headers([Secret(text) for text in secrets_], WEBHOOK_ID, timestamp_s, body)
    return values, timestamp_s


def event_body(metadata: dict[str, Any], snapshot: dict[str, Any]) -> bytes:
    registration = {
        "id": "reg_2bV9xQkP0aLmN3sT",
        "job_id": "job-signing-1",
        "metadata": json.dumps(metadata, ensure_ascii=False),
        "created_at_ms": "1767225600000",
    }
    return build_body("video.completed", registration, snapshot, 3, "", 1767225612345)


def test_headers_verify_with_standardwebhooks() -> None:
    body = b'{"type":"video.completed"}'
    values, timestamp_s = signed(body)

    payload = Webhook(OLD_SECRET).verify(body, values)

    assert payload == {"type": "video.completed"}
    assert values["content-type"] == "application/json"
    assert values["webhook-id"] == WEBHOOK_ID
    assert values["webhook-timestamp"] == str(timestamp_s)
    assert values["webhook-signature"].startswith("v1,")


def test_sign_matches_reference_signature() -> None:
    body = b'{"a":1}'
    timestamp_s = 1767225600

    moment = datetime.fromtimestamp(timestamp_s, UTC)

    expected = Webhook(OLD_SECRET).sign(WEBHOOK_ID, moment, body)

    assert sign([Secret(OLD_SECRET)], WEBHOOK_ID, timestamp_s, body) == expected


@pytest.mark.parametrize("receiver_secret", [OLD_SECRET, NEW_SECRET])
def test_two_secrets_verify_with_either(receiver_secret: str) -> None:
    body = b'{"type":"video.failed"}'
    values, _ = signed(body, (OLD_SECRET, NEW_SECRET))

    Webhook(receiver_secret).verify(body, values)

    assert len(values["webhook-signature"].split(" ")) == 2


def test_unknown_secret_fails_verification() -> None:
    body = b'{"type":"video.failed"}'
    values, _ = signed(body, (OLD_SECRET, NEW_SECRET))

    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, values)


def test_tampered_body_fails_verification() -> None:
    body = b'{"type":"video.completed","data":{"cost":1}}'
    values, _ = signed(body)

    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(body.replace(b"1", b"2"), values)


def test_tampered_id_fails_verification() -> None:
    body = b'{"type":"video.completed"}'
    values, _ = signed(body)
    values["webhook-id"] = WEBHOOK_ID + "x"

    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(body, values)


def test_tampered_timestamp_fails_verification() -> None:
    body = b'{"type":"video.completed"}'
    values, timestamp_s = signed(body)
    values["webhook-timestamp"] = str(timestamp_s + 1)

    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(body, values)


def test_generate_secret_has_prefix_and_size() -> None:
    secret = generate_secret(48)

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 48
    assert generate_secret() != generate_secret()


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param({"note": "née ✓ Zürich"}, id="non-ascii"),
        pytest.param({"clip": "🎬🎞️👩🏽‍💻"}, id="emoji"),
        pytest.param({"line": "a\u2028b\u2029c"}, id="line-separators"),
        pytest.param({"quote": "say \"hi\" and 'bye' \\ </script>"}, id="quotes"),
        pytest.param({"big": 10**30, "huge": 1.7976931348623157e308}, id="huge"),
        pytest.param({"tiny": 5e-324, "negative": -0.0}, id="tiny"),
        pytest.param({"control": "tab\there\x00nul"}, id="control"),
    ],
)
def test_event_body_verifies_byte_for_byte(metadata: dict[str, Any]) -> None:
    snapshot = {"status": "completed", "unsigned_urls": ["https://cdn.test/v.mp4"]}
    body = event_body(metadata, snapshot)
    values, _ = signed(body)

    payload = Webhook(OLD_SECRET).verify(body, values)

    assert payload["data"]["metadata"] == metadata
    assert json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() == (
        body
    )


def test_event_body_keeps_raw_utf8() -> None:
    body = event_body({"line": "a\u2028b", "clip": "🎬"}, {"status": "completed"})

    assert "a\u2028b".encode() in body
    assert "🎬".encode() in body
    assert b"\\u" not in body


def test_signature_covers_reencoded_body() -> None:
    body = event_body({"clip": "🎬"}, {"status": "completed"})
    values, _ = signed(body)
    ascii_body = json.dumps(json.loads(body), separators=(",", ":")).encode()

    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(ascii_body, values)
