"""Register many jobs through ``relay.store.Store.register``, as the API does.

Each registration passes the API's input rules first (``relay.registrations``),
so Redis stores exactly the fields an API request would store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import redis
import redis.asyncio as aioredis

import migrations
from bench.processes import LOOPBACK_CIDRS
from relay import keys as keyspace
from relay.registrations import new_registration_id, validate
from relay.settings import Settings
from relay.store import Limits, Store
from workers.poll import finish

DEFAULT_CONCURRENCY = 300
DEADLINE_S = 3 * 3600.0


def migrate(redis_url: str, prefix: str = "relay:") -> None:
    """Apply the keyspace migrations, as ``relay migrate`` does."""
    client = redis.Redis.from_url(redis_url)
    try:
        migrations.migrate(client, keyspace.Keys(prefix))
    finally:
        client.close()


async def register_all(
    redis_url: str,
    api_key: str,
    job_ids: Sequence[str],
    callback_url: str,
    first_delay_s: float,
    deadline_s: float = DEADLINE_S,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> float:
    """Register each job ID once with ``concurrency`` calls in flight.

    Returns the elapsed seconds. Raises RuntimeError if a job ID was already
    registered with this callback URL.
    """
    settings = Settings.from_env({"RELAY_CALLBACK_ALLOW_CIDRS": LOOPBACK_CIDRS})
    cred = keyspace.credential_id(api_key)
    client = aioredis.Redis.from_url(redis_url, max_connections=concurrency)
    store = Store(client, settings.key_prefix)
    next_index = iter(range(len(job_ids)))

    async def register_next() -> None:
        for index in next_index:
            request = validate(
                job_ids[index], callback_url, None, {"bench": index}, settings
            )
            result = await store.register(
                new_registration_id(),
                request,
                "default",
                cred,
                first_delay_s,
                deadline_s,
                Limits(),
            )
            if result.status != "created":
                raise RuntimeError(f"job {job_ids[index]!r} was already registered")

    started = time.perf_counter()
    try:
        await asyncio.gather(*(register_next() for _ in range(concurrency)))
    finally:
        await client.aclose()
    return time.perf_counter() - started


def register(
    redis_url: str,
    api_key: str,
    job_ids: Sequence[str],
    callback_url: str,
    first_delay_s: float,
    deadline_s: float = DEADLINE_S,
) -> float:
    """Run ``register_all`` to completion; return the elapsed seconds."""
    return asyncio.run(
        register_all(
            redis_url, api_key, job_ids, callback_url, first_delay_s, deadline_s
        )
    )


async def finish_all(
    redis_url: str,
    api_key: str,
    job_ids: Sequence[str],
    concurrency: int = DEFAULT_CONCURRENCY,
) -> None:
    """End each job's tracker as a ``completed`` poll would, creating its events.

    This runs the workers' own ``finish`` step, so the events are the ones a
    real poll creates, without a worker having to poll first.
    """
    cred = keyspace.credential_id(api_key)
    client = aioredis.Redis.from_url(redis_url, max_connections=concurrency)
    store = Store(client, "relay:")
    next_index = iter(range(len(job_ids)))
    snapshot = {"status": "completed", "generation_id": "gen-bench"}

    async def finish_next() -> None:
        for index in next_index:
            tracker_id = f"{cred}:{job_ids[index]}"
            tracker = await store.tracker(tracker_id)
            if tracker is None:
                raise RuntimeError(f"job {job_ids[index]!r} has no tracker")
            await finish(store, tracker_id, tracker, "video.completed", "", 1, snapshot)

    try:
        await asyncio.gather(*(finish_next() for _ in range(concurrency)))
    finally:
        await client.aclose()
