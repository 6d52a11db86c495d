"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``.

The scheme is the one at https://www.standardwebhooks.com/: the signed content
is ``{webhook-id}.{webhook-timestamp}.{body}``, the key is the base64 part of a
``whsec_`` secret, and several signatures are separated by spaces while secrets
rotate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from relay.settings import SIGNING_SECRET_PREFIX, Secret


def generate_secret(size_bytes: int = 32) -> str:
    """Return a new random ``whsec_`` secret."""
    key = secrets.token_bytes(size_bytes)
    return SIGNING_SECRET_PREFIX + base64.b64encode(key).decode()


def sign(
    secrets_: Sequence[Secret], webhook_id: str, timestamp_s: int, body: bytes
) -> str:
    """Return the ``webhook-signature`` header value for one attempt."""
    content = f"{webhook_id}.{timestamp_s}.".encode() + body
    signatures = []
    for secret in secrets_:
        key = base64.b64decode(secret.reveal()[len(SIGNING_SECRET_PREFIX) :])
        digest = hmac.new(key, content, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def headers(
    secrets_: Sequence[Secret], webhook_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """Return the three Standard Webhooks headers plus the content type."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": sign(secrets_, webhook_id, timestamp_s, body),
    }
