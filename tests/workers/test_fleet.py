"""Several workers at once: leases, races, clock skew and the shared rate limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from relay import lua
from relay.crypto import Keyring
from relay.keys import Keys, credential_id
from relay.ratelimit import RateLimiter
from relay.settings import Settings
from relay.store import Store
from relay.tenants import Tenants
from relay.upstream import ModelGatesClient
from tests.conftest import MODELGATES_KEY, PREFIX, SimulatorAdmin, WorkerFactory
from tests.receivers import WebhookReceiver
from tests.workers.test_poll import register, wait_for_polls
from workers.keychain import Keychain
from workers.poll import poll_trackers
from workers.runtime import Poller, build_upstream_client

SKEWED_CLOCK = """
import os
import time

_offset_s = float(os.environ["TEST_CLOCK_OFFSET_S"])
_real_time = time.time
time.time = lambda: _real_time() + _offset_s
"""


def tracker_id(job_id: str) -> str:
    return f"{credential_id(MODELGATES_KEY)}:{job_id}"


def total_polls(sim: SimulatorAdmin) -> int:
    return int(sim.http.get("/_sim/stats").json()["polls"])


def test_lease_expiry_repolls_claimed_tracker(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    job_id = sim.job("completed")
    register(api, job_id, receiver.url())
    # Claim the tracker as a worker would, then never finish: a dead worker.
    claim = redis_client.register_script(lua.CLAIM)
    deadline = time.monotonic() + 5
    # The reply is the wait, the lease score, then the claimed members.
    while not claim(keys=[f"{PREFIX}schedule:poll"], args=[10, 2.0])[2:]:
        assert time.monotonic() < deadline, "tracker never became due"
        time.sleep(0.01)
    claimed_at = time.time()
    start_worker()

    time.sleep(1.0)
    assert sim.polls(job_id) == 0

    [delivery] = receiver.wait_for(1)
    assert delivery.received_at - claimed_at >= 1.9
    assert sim.polls(job_id) == 1


def test_concurrent_polls_emit_one_event(
    api: httpx.Client,
    env: dict[str, str],
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    settings = Settings.from_env(env)
    jobs = [sim.job("completed") for _ in range(10)]
    registrations = [register(api, job_id, receiver.url()) for job_id in jobs]

    async def race() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        http = build_upstream_client(settings)
        store = Store(client, PREFIX)
        poller = Poller(
            store=store,
            modelgates=ModelGatesClient(settings, http),
            limiter=RateLimiter(client, Keys(PREFIX), 0),
            settings=settings,
            keychain=Keychain(Tenants(client, Keys(PREFIX), Keyring()), settings),
        )
        ids = [tracker_id(job_id) for job_id in jobs]
        await asyncio.gather(*(poll_trackers(poller, ids) for _ in range(3)))
        await http.aclose()
        await client.aclose()

    asyncio.run(race())

    assert len(redis_client.keys(f"{PREFIX}event:*")) == len(registrations)
    assert redis_client.zcard(f"{PREFIX}schedule:deliver") == len(registrations)
    for registration_id in registrations:
        state = redis_client.hget(f"{PREFIX}reg:{registration_id}", "state")
        assert state == b"delivering"


@pytest.mark.parametrize("offsets_s", [("5", "-5")])
def test_skewed_worker_clocks_change_nothing(
    api: httpx.Client,
    start_worker: WorkerFactory,
    start_api: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    tmp_path: Path,
    offsets_s: tuple[str, str],
) -> None:
    (tmp_path / "sitecustomize.py").write_text(SKEWED_CLOCK)
    for offset_s in offsets_s:
        start_worker(PYTHONPATH=str(tmp_path), TEST_CLOCK_OFFSET_S=offset_s)
    slow_start = start_api(RELAY_POLL_FIRST_DELAY_S="1")  # type: ignore[operator]
    jobs = [sim.job("pending*2", "completed") for _ in range(6)]
    registered_at = time.monotonic()
    registrations = [register(slow_start, job_id, receiver.url()) for job_id in jobs]

    time.sleep(0.7)
    early_polls = sum(sim.polls(job_id) for job_id in jobs)
    deliveries = receiver.wait_for(len(jobs))

    assert time.monotonic() - registered_at >= 0.7
    assert early_polls == 0
    assert sorted(
        d.payload["data"]["registration_id"] for d in deliveries if d.payload
    ) == sorted(registrations)
    assert all(sim.polls(job_id) == 3 for job_id in jobs)


def test_rate_limit_holds_across_workers(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    rate_per_s = 20
    for _ in range(3):
        start_worker(
            RELAY_UPSTREAM_RATE_PER_S=str(rate_per_s), RELAY_POLL_MAX_INTERVAL_S="0.05"
        )
    jobs = [sim.job("pending") for _ in range(60)]
    for job_id in jobs:
        register(api, job_id, receiver.url())
    wait_for_polls(sim, jobs[0], 1)

    time.sleep(1)
    before = total_polls(sim)
    time.sleep(3)
    polls = total_polls(sim) - before

    assert polls <= rate_per_s * 3 * 1.05 + 2
    assert polls >= rate_per_s * 3 * 0.6


def test_429_pauses_every_worker(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    for _ in range(3):
        start_worker(RELAY_UPSTREAM_RATE_PER_S="50", RELAY_POLL_MAX_INTERVAL_S="0.05")
    busy = [sim.job("pending") for _ in range(30)]
    for job_id in busy:
        register(api, job_id, receiver.url())
    wait_for_polls(sim, busy[0], 2)
    limited = sim.job("429:3", "completed")
    register(api, limited, receiver.url())

    wait_for_polls(sim, limited, 1)
    time.sleep(0.1)
    before = total_polls(sim)
    time.sleep(2.0)
    during_pause = total_polls(sim) - before
    [delivery] = receiver.wait_for(1, timeout_s=15)

    assert during_pause == 0
    assert delivery.payload is not None
    assert delivery.payload["data"]["job_id"] == limited
