"""The secrets a worker needs per tenant and per ModelGates credential.

Signing secrets and ModelGates keys are read from Redis and unsealed at most
once per ``CACHE_S`` seconds per tenant or credential, so a rotation reaches
every worker within that time. The tenant ``default`` and the relay-wide
credential come from the environment.
"""

from __future__ import annotations

import time

from relay.keys import credential_id
from relay.settings import Secret, Settings
from relay.tenants import DEFAULT_TENANT, Tenants

CACHE_S = 5.0


class Keychain:
    """Looks up and caches signing secrets and ModelGates keys."""

    def __init__(self, tenants: Tenants, settings: Settings) -> None:
        self._tenants = tenants
        self._settings = settings
        self.default_cred = credential_id(settings.modelgates_api_key.reveal())
        self._signing: dict[str, tuple[float, tuple[Secret, ...]]] = {}
        self._modelgates: dict[str, tuple[float, Secret | None]] = {}

    async def signing_secrets(self, tenant: str, now_s: float) -> tuple[Secret, ...]:
        """Return the secrets that sign ``tenant``'s webhooks now.

        Raises ``relay.crypto.SealError`` when a stored secret does not open
        with the configured keys.
        """
        if tenant == DEFAULT_TENANT:
            return self._settings.active_signing_secrets(now_s)
        clock = time.monotonic()
        cached = self._signing.get(tenant)
        if cached is not None and cached[0] > clock:
            return cached[1]
        found = await self._tenants.signing_secrets(tenant, now_s)
        self._signing[tenant] = (clock + CACHE_S, found)
        return found

    async def modelgates_key(self, cred: str) -> Secret | None:
        """Return the ModelGates key of a credential ID; None if none is stored."""
        if cred == self.default_cred:
            return self._settings.modelgates_api_key
        clock = time.monotonic()
        cached = self._modelgates.get(cred)
        if cached is not None and cached[0] > clock:
            return cached[1]
        found = await self._tenants.modelgates_key(cred)
        self._modelgates[cred] = (clock + CACHE_S, found)
        return found
