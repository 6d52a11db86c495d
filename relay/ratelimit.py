"""A fleet-wide request budget per ModelGates key, kept in Redis.

Every worker takes tokens from one bucket per key before it polls, so the
fleet stays under ``RELAY_UPSTREAM_RATE_PER_S`` however many workers run. A
``429`` pauses the key for every worker until its ``Retry-After`` has passed.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from relay import lua
from relay.keys import Keys
from relay.store import translate_errors

# The bucket contains at most this share of one second's budget. Grants in
# any second then stay under the rate plus 2.5%, which leaves the other half
# of a 5% allowance for requests that leave the worker later than granted.
BURST_SHARE = 0.025


class RateLimiter:
    """Grants poll tokens per ModelGates key and records 429 pauses."""

    def __init__(self, client: aioredis.Redis, keys: Keys, rate_per_s: float) -> None:
        self.keys = keys
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, math.floor(rate_per_s * BURST_SHARE))
        self._acquire = client.register_script(lua.ACQUIRE)
        self._pause = client.register_script(lua.PAUSE)

    async def acquire(self, cred: str, requested: int) -> tuple[int, float]:
        """Take up to ``requested`` tokens; return (granted, seconds until more)."""
        async with translate_errors():
            granted, wait_s = await self._acquire(
                keys=[self.keys.rate_limit(cred), self.keys.pause(cred)],
                args=[self.rate_per_s, self.burst, requested],
            )
        return int(granted), float(wait_s)

    async def pause(self, cred: str, seconds: float) -> bool:
        """Stop every worker's polls with this key for ``seconds``.

        Returns whether this call started or lengthened the pause.
        """
        async with translate_errors():
            started = await self._pause(
                keys=[self.keys.pause(cred)], args=[max(1, int(seconds * 1000))]
            )
        return bool(started)
