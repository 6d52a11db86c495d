"""The index sweep removes members whose registration expired, in bounded rounds."""

from __future__ import annotations

import httpx
import redis

from relay.keys import Keys
from tests.conftest import PREFIX
from workers import maintenance

KEYS = Keys(PREFIX)
INDEX = f"{PREFIX}idx:regs:default"


def register(api: httpx.Client, count: int) -> list[str]:
    ids = []
    for number in range(count):
        reply = api.post(
            "/v1/registrations",
            json={
                "job_id": f"job-sweep-{number}",
                "callback_url": "http://127.0.0.1:9/",
            },
        )
        assert reply.status_code == 201, reply.text
        ids.append(reply.json()["id"])
    return ids


def test_sweep_removes_only_expired_members(
    api: httpx.Client, redis_client: redis.Redis
) -> None:
    ids = register(api, 6)
    for registration_id in ids[::2]:
        redis_client.delete(f"{PREFIX}reg:{registration_id}")

    removed = maintenance.sweep(redis_client, KEYS)

    assert removed == 3
    left = [m.decode().split(":", 1)[1] for m in redis_client.zrange(INDEX, 0, -1)]
    assert left == ids[1::2]


def test_one_worker_sweeps_at_a_time(
    api: httpx.Client, redis_client: redis.Redis
) -> None:
    [registration_id] = register(api, 1)
    redis_client.delete(f"{PREFIX}reg:{registration_id}")
    redis_client.set(f"{PREFIX}lock:sweep", "1", ex=60)

    assert maintenance.sweep(redis_client, KEYS) == 0
    assert redis_client.zcard(INDEX) == 1


def test_sweep_resumes_where_its_budget_ran_out(
    api: httpx.Client, redis_client: redis.Redis
) -> None:
    ids = register(api, 5)
    for registration_id in ids:
        redis_client.delete(f"{PREFIX}reg:{registration_id}")

    rounds = 0
    while redis_client.zcard(INDEX):
        redis_client.delete(f"{PREFIX}lock:sweep")
        maintenance.sweep(redis_client, KEYS, budget=2)
        rounds += 1
        assert rounds <= 5

    assert rounds >= 2
