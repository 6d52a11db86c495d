"""Upkeep that no request triggers: removing expired registrations from indexes.

A registration hash expires after the retention period, but its member in
``idx:regs:{tenant}`` has no expiry of its own. The listing skips and removes
such members when it meets them; this sweep removes them for tenants that
never list. One worker at a time sweeps, a bounded number of members per
tenant per round, resuming where the last round stopped.
"""

from __future__ import annotations

from typing import cast

import redis
import structlog

from relay.keys import Keys

log = structlog.get_logger(__name__)

# How often each worker tries to take the sweep; only one succeeds.
SWEEP_EVERY_S = 60.0
# Index members checked per tenant per round.
SWEEP_BUDGET = 5000
CHUNK = 500


def sweep(client: redis.Redis, keys: Keys, budget: int = SWEEP_BUDGET) -> int:
    """Remove index members whose registration is gone; return how many.

    Returns 0 without work when another worker has the sweep lock.
    """
    if not client.set(keys.sweep_lock, "1", nx=True, ex=int(SWEEP_EVERY_S)):
        return 0
    removed = 0
    for raw in client.smembers(keys.tenants) | {b"default"}:
        removed += _sweep_tenant(client, keys, cast(bytes, raw).decode(), budget)
    if removed:
        log.info("maintenance.index_swept", removed=removed)
    return removed


def _sweep_tenant(client: redis.Redis, keys: Keys, tenant: str, budget: int) -> int:
    index = keys.tenant_registrations(tenant)
    cursor = client.hget(keys.tenant(tenant), "sweep_cursor")
    low = "(" + cast(bytes, cursor).decode() if cursor else "-"
    removed = 0
    checked = 0
    while checked < budget:
        members = [
            cast(bytes, m).decode()
            for m in client.zrangebylex(
                index, low, "+", 0, min(CHUNK, budget - checked)
            )
        ]
        if not members:
            # The end of the index: the next round starts from the beginning.
            client.hdel(keys.tenant(tenant), "sweep_cursor")
            return removed
        with client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.exists(keys.registration(member.split(":", 1)[1]))
            alive = pipe.execute()
        stale = [m for m, exists in zip(members, alive, strict=True) if not exists]
        if stale:
            removed += int(client.zrem(index, *stale))
        checked += len(members)
        low = "(" + members[-1]
    client.hset(keys.tenant(tenant), "sweep_cursor", low[1:])
    return removed
