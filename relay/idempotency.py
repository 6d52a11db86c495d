"""The ``Idempotency-Key`` header: a retried POST gets the first response again.

The first request with a key claims it for ``CLAIM_S`` seconds while it runs.
A successful response is then stored for ``RELAY_IDEMPOTENCY_TTL_S`` together
with a digest of the request body, and returned again to any request with the
same key and body. A request with the same key and another body is refused,
and so is one that arrives while the first is still running. A failed first
request releases the key, so the client can retry it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

import redis.asyncio as aioredis

from relay.keys import Keys
from relay.store import translate_errors

CLAIM_S = 60
# Rounds of claim-or-read before giving up on a key that keeps changing.
CLAIM_TRIES = 3
MAX_KEY_CHARS = 255
HEADER = "idempotency-key"


class IdempotencyError(Exception):
    """A request's key cannot be used; ``status`` is the HTTP status to respond with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Replay:
    """A stored response to send again."""

    status: int
    body: bytes


def check_key(value: str) -> str:
    """Return the header value if it is usable as a key, else raise."""
    if not 1 <= len(value) <= MAX_KEY_CHARS or not value.isascii():
        raise IdempotencyError(
            400,
            f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} ASCII characters; "
            "a UUID is a good choice",
        )
    if not value.isprintable():
        raise IdempotencyError(
            400, "Idempotency-Key must not contain control characters"
        )
    return value


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()[:16]).decode()


class Idempotency:
    """Claims, stores and replays responses under ``idem:{tenant}:{digest}``."""

    def __init__(self, client: aioredis.Redis, keys: Keys, ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = int(ttl_s)

    def key(self, tenant: str, header: str) -> str:
        return self.keys.idempotency(tenant, _digest(header.encode()))

    async def claim(self, key: str, body: bytes) -> Replay | None:
        """Claim ``key`` for this request, or return the response stored under it.

        Raises IdempotencyError when another body used the key, or when the
        first request is still running.
        """
        fingerprint = _digest(body)
        claim = json.dumps({"state": "running", "request": fingerprint})
        raw = None
        for _ in range(CLAIM_TRIES):
            async with translate_errors():
                if await self.client.set(key, claim, nx=True, ex=CLAIM_S):
                    return None
                raw = await self.client.get(key)
            if raw is not None:
                break
            # The first request failed and released the key just now.
        if raw is None:
            raise IdempotencyError(
                409, "this Idempotency-Key is changing hands; retry in a moment"
            )
        stored = json.loads(raw)
        if stored["request"] != fingerprint:
            raise IdempotencyError(
                422,
                "this Idempotency-Key was used with a different request body; "
                "send a new key for a new request",
            )
        if stored["state"] == "running":
            raise IdempotencyError(
                409,
                "a request with this Idempotency-Key is still being processed; "
                "retry in a moment",
            )
        return Replay(int(stored["status"]), stored["body"].encode())

    async def store(self, key: str, body: bytes, status: int, answer: bytes) -> None:
        """Keep a successful response for the key's lifetime."""
        record = json.dumps(
            {
                "state": "done",
                "request": _digest(body),
                "status": status,
                "body": answer.decode(),
            }
        )
        async with translate_errors():
            await self.client.set(key, record, ex=self.ttl_s)

    async def release(self, key: str) -> None:
        """Free a key whose first request failed, so a retry runs again."""
        async with translate_errors():
            await self.client.delete(key)
