"""Authentication: the single-tenant token or a tenant's API key, per request.

A key's tenant and ModelGates credential are kept in process memory for
``CACHE_S`` seconds after a successful lookup, so a busy client costs no Redis
round trip per request. A revoked key therefore stops working within that
time on every API process. Failed lookups are not kept: a new key works at
once.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from relay.settings import Secret
from relay.tenants import DEFAULT_TENANT, Tenants

CACHE_S = 2.0
CACHE_ENTRIES = 10_000
TOKEN_KEY_ID = "token"  # noqa: S105 - the key ID shown for RELAY_API_TOKEN


@dataclass(frozen=True)
class Caller:
    """An authenticated request's tenant, key and ModelGates credential ID."""

    tenant: str
    key_id: str
    cred: str


class Authenticator:
    """Turns a bearer token into a Caller, or None."""

    def __init__(self, tenants: Tenants, api_token: Secret, default_cred: str) -> None:
        self._tenants = tenants
        self._token = api_token.reveal().encode()
        self._default_cred = default_cred
        self._cache: dict[bytes, tuple[float, Caller]] = {}

    async def caller(self, token: bytes) -> Caller | None:
        """Return the Caller that ``token`` belongs to, or None for an unknown token."""
        if self._token and hmac.compare_digest(token, self._token):
            return Caller(DEFAULT_TENANT, TOKEN_KEY_ID, self._default_cred)
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            return None
        principal = await self._tenants.authenticate(text)
        if principal is None:
            self._cache.pop(token, None)
            return None
        cred = self._default_cred
        if principal.tenant != DEFAULT_TENANT:
            cred = await self._tenants.cred(principal.tenant, self._default_cred)
        found = Caller(principal.tenant, principal.key_id, cred)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[token] = (now + CACHE_S, found)
        return found

    def forget(self, tenant: str) -> None:
        """Drop this process's cached lookups of a tenant's keys.

        Called when the tenant's ModelGates key changes, so this process's
        next registrations use the new key at once; other processes take up
        to ``CACHE_S`` seconds.
        """
        for token, (_, caller) in list(self._cache.items()):
            if caller.tenant == tenant:
                del self._cache[token]
