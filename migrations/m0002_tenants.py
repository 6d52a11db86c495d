"""Version 2: tenants, an index of each tenant's registrations, trackers that
list their registrations in their own hash, and counts of trackers by status.

Registrations written by version 1 all belong to the tenant ``default``. This
step adds each one to ``idx:regs:default`` and sets that tenant's count of
active registrations (tracking or delivering), which the API's cap reads.
It then moves each ``tracker:{cred}:{job}:regs`` set into fields ``r:{ID}``
of its tracker hash. It can run again after an interruption: the index and
the count are rebuilt from the registrations, and a set is deleted only in
the transaction that copies it.
"""

from __future__ import annotations

from typing import cast

import redis

from relay.keys import Keys
from relay.store import REGISTRATION_FIELD, index_member
from relay.tenants import DEFAULT_TENANT

BATCH = 500
ACTIVE_STATES = (b"tracking", b"delivering")


def apply(client: redis.Redis, keys: Keys) -> None:
    """Index the existing registrations and count the active ones."""
    active = 0
    pattern = keys.registration("*")
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            active += _index(client, keys, batch)
            batch = []
    if batch:
        active += _index(client, keys, batch)
    if active or client.exists(keys.tenant(DEFAULT_TENANT)):
        client.hset(keys.tenant(DEFAULT_TENANT), "active", active)
    _fold_tracker_sets(client, keys)
    # Version 1 trackers record no status, so they count as unknown until
    # their next poll.
    trackers = client.zcard(keys.poll_schedule)
    if trackers:
        client.hset(keys.stats("tracked"), "unknown", trackers)


def _fold_tracker_sets(client: redis.Redis, keys: Keys) -> None:
    """Move each version 1 set of a tracker's registrations into its hash."""
    for key in client.scan_iter(match=keys.tracker("*:regs"), count=1000):
        if client.type(key) != b"set":
            continue  # a tracker hash whose job ID ends in ':regs'
        tracker_key = bytes(key).decode().removesuffix(":regs")
        members = [cast(bytes, member).decode() for member in client.smembers(key)]
        with client.pipeline(transaction=True) as pipe:
            if members and client.exists(tracker_key):
                for member in members:
                    pipe.hset(tracker_key, REGISTRATION_FIELD + member, 1)
            pipe.delete(key)
            pipe.execute()


def _index(client: redis.Redis, keys: Keys, batch: list[bytes]) -> int:
    prefix = keys.registration("")
    with client.pipeline(transaction=False) as pipe:
        for key in batch:
            pipe.hmget(key, ["created_at_ms", "state", "tenant"])
        rows = pipe.execute()
    active = 0
    with client.pipeline(transaction=False) as pipe:
        for key, (created_at_ms, state, tenant) in zip(batch, rows, strict=True):
            if created_at_ms is None:
                continue
            registration_id = key.decode().removeprefix(prefix)
            member = index_member(int(created_at_ms), registration_id)
            name = tenant.decode() if tenant else DEFAULT_TENANT
            pipe.zadd(keys.tenant_registrations(name), {member: 0})
            active += state in ACTIVE_STATES
        pipe.execute()
    return active
