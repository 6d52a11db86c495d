"""Tenants and their API keys, signing secrets and ModelGates keys.

An API key reads ``rk_<key ID>_<secret>``. Redis keeps only the SHA-256 of the
whole key under ``apikey:<key ID>``; the key ID names the key in listings and
revocations without revealing it. The keys are 256-bit random strings, so a
fast hash is enough: a key cannot be guessed from its digest.

The tenant ``default`` is the single-tenant mode of the first version: the
``RELAY_API_TOKEN`` authenticates as it, and it signs with
``RELAY_SIGNING_SECRET`` and polls with ``MODELGATES_API_KEY`` from the
environment. Every other tenant has its own signing secret, and may have its
own ModelGates key, both sealed with ``relay.crypto`` in Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from relay import keys as keyspace
from relay.crypto import Keyring
from relay.settings import Secret
from relay.signing import generate_secret
from relay.store import decode, translate_errors

DEFAULT_TENANT = "default"
API_KEY_PREFIX = "rk_"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEY_ID = re.compile(r"^[0-9a-f]{12}$")


class TenantError(ValueError):
    """A tenant or key operation was rejected; the message explains why."""


@dataclass(frozen=True)
class Principal:
    """The sender of a request: a tenant, through one of its keys."""

    tenant: str
    key_id: str


@dataclass(frozen=True)
class CreatedKey:
    """A new API key, and the tenant's signing secret when the tenant is new."""

    key_id: str
    api_key: str
    tenant: str
    signing_secret: str | None


def check_tenant_name(name: str) -> str:
    """Return ``name`` if it is a valid tenant name, else raise TenantError."""
    if not TENANT_NAME.match(name):
        raise TenantError(
            f"tenant name {name[:64]!r} must be 1 to 63 lower-case letters, digits, "
            "'-' or '_', starting with a letter or digit"
        )
    return name


def key_id_of(api_key: str) -> str | None:
    """Return the key ID inside an API key, or None if it is not one."""
    if not api_key.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, rest = api_key[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not rest or not _KEY_ID.match(key_id):
        return None
    return key_id


def is_usable_modelgates_key(api_key: str) -> bool:
    """Return whether a key can be sent in an ``Authorization`` header."""
    return (
        0 < len(api_key) <= 512
        and api_key.isascii()
        and api_key.isprintable()
        and " " not in api_key
    )


def key_digest(api_key: str) -> str:
    """Return the stored form of an API key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def _text(raw: bytes | str) -> str:
    """Return a Redis reply as text."""
    return raw.decode() if isinstance(raw, bytes) else raw


def _signing_context(tenant: str) -> str:
    return f"signing-secret:{tenant}"


def _modelgates_context(cred: str) -> str:
    return f"modelgates-key:{cred}"


class Tenants:
    """Reads and changes tenants and API keys in Redis."""

    def __init__(
        self, client: aioredis.Redis, keys: keyspace.Keys, keyring: Keyring
    ) -> None:
        self.client = client
        self.keys = keys
        self.keyring = keyring

    # API keys

    async def create_key(self, tenant: str) -> CreatedKey:
        """Create an API key for ``tenant``, creating the tenant if it is new."""
        check_tenant_name(tenant)
        sealed_secret = None
        signing_secret = None
        if tenant != DEFAULT_TENANT:
            signing_secret = generate_secret()
            sealed_secret = self.keyring.seal(signing_secret, _signing_context(tenant))

        key_id = secrets.token_hex(6)
        api_key = f"{API_KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now_ms = int(time.time() * 1000)
        keys = self.keys

        async with translate_errors(), self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.tenants, tenant)
            pipe.hsetnx(keys.tenant(tenant), "created_at_ms", now_ms)
            if sealed_secret is not None:
                pipe.hsetnx(keys.tenant(tenant), "secret", sealed_secret)
            pipe.hset(
                keys.api_key(key_id),
                mapping={
                    "tenant": tenant,
                    "digest": key_digest(api_key),
                    "created_at_ms": now_ms,
                },
            )
            pipe.sadd(keys.api_keys, key_id)
            results = await pipe.execute()

        # The secret is shown only when this call stored it: a tenant that
        # existed keeps the secret it has.
        secret_stored = sealed_secret is not None and bool(results[2])
        return CreatedKey(
            key_id, api_key, tenant, signing_secret if secret_stored else None
        )

    async def list_keys(self, tenant: str | None = None) -> list[dict[str, str]]:
        """Return every API key's ID, tenant and times, oldest first."""
        async with translate_errors():
            ids = sorted(
                _text(m) for m in await self.client.smembers(self.keys.api_keys)
            )
            async with self.client.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self.keys.api_key(key_id))
                rows = await pipe.execute()
        listed = []
        for key_id, raw in zip(ids, rows, strict=True):
            row = decode(raw)
            if not row or (tenant is not None and row["tenant"] != tenant):
                continue
            row.pop("digest", None)
            listed.append({"key_id": key_id} | row)
        return sorted(listed, key=lambda row: int(row["created_at_ms"]))

    async def revoke(self, key_id: str) -> bool:
        """Revoke an API key; False if there is no such key or it was revoked."""
        key = self.keys.api_key(key_id)
        async with translate_errors():
            if not await self.client.exists(key):
                return False
            return bool(
                await self.client.hsetnx(key, "revoked_at_ms", int(time.time() * 1000))
            )

    async def authenticate(self, api_key: str) -> Principal | None:
        """Return who an API key belongs to, or None if it is unknown or revoked."""
        key_id = key_id_of(api_key)
        if key_id is None:
            return None
        async with translate_errors():
            raw = await self.client.hmget(
                self.keys.api_key(key_id), ["tenant", "digest", "revoked_at_ms"]
            )
        tenant, digest, revoked = raw
        if tenant is None or digest is None or revoked is not None:
            return None
        if not hmac.compare_digest(_text(digest), key_digest(api_key)):
            return None
        return Principal(_text(tenant), key_id)

    # Tenants

    async def exists(self, tenant: str) -> bool:
        async with translate_errors():
            return bool(await self.client.sismember(self.keys.tenants, tenant))

    async def names(self) -> list[str]:
        async with translate_errors():
            return sorted(
                _text(m) for m in await self.client.smembers(self.keys.tenants)
            )

    async def info(self, tenant: str) -> dict[str, Any]:
        """Return what may be shown of a tenant: never a secret or a key."""
        async with translate_errors():
            row = decode(await self.client.hgetall(self.keys.tenant(tenant)))
        until_ms = int(row.get("previous_until_ms", 0))
        return {
            "name": tenant,
            "created_at_ms": int(row["created_at_ms"])
            if "created_at_ms" in row
            else None,
            "active_registrations": int(row.get("active", 0)),
            "own_modelgates_key": "mg_cred" in row,
            "previous_secret_until_ms": until_ms or None,
        }

    async def cred(self, tenant: str, default_cred: str) -> str:
        """Return the credential ID the tenant's new registrations poll with."""
        async with translate_errors():
            raw = await self.client.hget(self.keys.tenant(tenant), "mg_cred")
        return _text(raw) if raw else default_cred

    async def rotate_secret(self, tenant: str, grace_s: float) -> str:
        """Give ``tenant`` a new signing secret; the old one also signs for a while."""
        await self._require_own_secrets(tenant)
        new_secret = generate_secret()
        sealed = self.keyring.seal(new_secret, _signing_context(tenant))
        key = self.keys.tenant(tenant)
        until_ms = int((time.time() + grace_s) * 1000)
        async with translate_errors():
            old = await self.client.hget(key, "secret")
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(key, "secret", sealed)
                if old is not None and grace_s > 0:
                    pipe.hset(key, "previous_secret", _text(old))
                    pipe.hset(key, "previous_until_ms", until_ms)
                else:
                    pipe.hdel(key, "previous_secret", "previous_until_ms")
                await pipe.execute()
        return new_secret

    async def set_modelgates_key(self, tenant: str, api_key: str) -> None:
        """Store the tenant's own ModelGates key, sealed; new registrations use it."""
        await self._require_own_secrets(tenant)
        if not is_usable_modelgates_key(api_key):
            raise TenantError(
                "the ModelGates key must be 1 to 512 printable ASCII characters "
                "without spaces"
            )
        cred = keyspace.credential_id(api_key)
        sealed = self.keyring.seal(api_key, _modelgates_context(cred))
        async with translate_errors(), self.client.pipeline(transaction=True) as pipe:
            # Trackers of earlier registrations keep polling with the key they
            # started with, so an older key stays stored under its own cred.
            pipe.set(self.keys.credential(cred), sealed)
            pipe.hset(self.keys.tenant(tenant), "mg_cred", cred)
            await pipe.execute()

    async def clear_modelgates_key(self, tenant: str) -> None:
        """Make the tenant's new registrations poll with the relay-wide key."""
        await self._require_own_secrets(tenant)
        async with translate_errors():
            await self.client.hdel(self.keys.tenant(tenant), "mg_cred")

    async def _require_own_secrets(self, tenant: str) -> None:
        if tenant == DEFAULT_TENANT:
            raise TenantError(
                "the default tenant uses RELAY_SIGNING_SECRET and MODELGATES_API_KEY "
                "from the environment; change those instead"
            )
        if not await self.exists(tenant):
            raise TenantError(
                f"tenant {tenant!r} does not exist; create it with "
                f"`relay keys create --tenant {tenant}`"
            )

    # What workers need

    async def signing_secrets(self, tenant: str, now_s: float) -> tuple[Secret, ...]:
        """Return the secrets to sign a tenant's webhooks with at ``now_s``."""
        async with translate_errors():
            row = decode(await self.client.hgetall(self.keys.tenant(tenant)))
        if "secret" not in row:
            return ()
        context = _signing_context(tenant)
        found = [Secret(self.keyring.open(row["secret"], context))]
        if "previous_secret" in row and now_s * 1000 < int(row["previous_until_ms"]):
            found.append(Secret(self.keyring.open(row["previous_secret"], context)))
        return tuple(found)

    async def modelgates_key(self, cred: str) -> Secret | None:
        """Return the ModelGates key stored under ``cred``, or None."""
        async with translate_errors():
            sealed = await self.client.get(self.keys.credential(cred))
        if sealed is None:
            return None
        return Secret(self.keyring.open(_text(sealed), _modelgates_context(cred)))

    async def reencrypt(self) -> int:
        """Seal every stored secret again with the first configured key.

        Returns how many values changed. A value that no configured key opens
        raises SealError and stops the run, so nothing is left half done
        without a message.
        """
        sealing_id = self.keyring.sealing_id
        changed = 0
        client = self.client
        for tenant in await self.names():
            key = self.keys.tenant(tenant)
            async with translate_errors():
                row = decode(await client.hgetall(key))
            for field in ("secret", "previous_secret"):
                value = row.get(field)
                if value and self.keyring.key_id_of(value) != sealing_id:
                    plain = self.keyring.open(value, _signing_context(tenant))
                    sealed = self.keyring.seal(plain, _signing_context(tenant))
                    async with translate_errors():
                        await client.hset(key, field, sealed)
                    changed += 1
        async with translate_errors():
            cred_keys = [k async for k in client.scan_iter(self.keys.credential("*"))]
        for cred_key in cred_keys:
            cred = cred_key.decode().rsplit(":", 1)[1]
            async with translate_errors():
                raw = await client.get(cred_key)
            if raw is None or self.keyring.key_id_of(_text(raw)) == sealing_id:
                continue
            plain = self.keyring.open(_text(raw), _modelgates_context(cred))
            async with translate_errors():
                await client.set(
                    cred_key, self.keyring.seal(plain, _modelgates_context(cred))
                )
            changed += 1
        return changed
