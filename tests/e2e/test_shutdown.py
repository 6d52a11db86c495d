"""SIGTERM: a worker finishes what it can within the grace and hands back the rest.

Each test stops a ``relay worker`` subprocess while its polls or webhook
attempts wait on a slow server on loopback. Work that ends within
``RELAY_SHUTDOWN_GRACE_S`` is recorded. The rest is due again at once, and a
second worker completes it with one webhook per registration.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.conftest import PREFIX, SimulatorAdmin, WorkerFactory
from tests.receivers import Behaviour, WebhookReceiver
from tests.workers.test_deliver import wait_for_state
from tests.workers.test_poll import register, wait_for_polls

# Safety nets only: each wait ends as soon as its condition holds.
EXIT_TIMEOUT_S = 30
WAIT_TIMEOUT_S = 20


def redis_now(redis_client: redis.Redis) -> float:
    seconds, microseconds = redis_client.time()
    return seconds + microseconds / 1_000_000


def stop(worker: subprocess.Popen[bytes]) -> int:
    """Send SIGTERM and return the exit status."""
    worker.send_signal(signal.SIGTERM)
    return worker.wait(timeout=EXIT_TIMEOUT_S)


def log_events(log_path: Path, event: str) -> list[dict[str, Any]]:
    """Return the worker's JSON log lines whose event is ``event``."""
    found = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def wait_for_heartbeat(redis_client: redis.Redis) -> str:
    """Wait until a worker has written its heartbeat, and return its name."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not (names := redis_client.zrange(f"{PREFIX}workers", 0, -1)):
        assert time.monotonic() < deadline, "no worker wrote a heartbeat"
        time.sleep(0.05)
    return str(names[0].decode())


def wait_until_settled(api: httpx.Client, registrations: list[str]) -> None:
    """Wait until every registration is delivered."""
    for registration_id in registrations:
        wait_for_state(api, registration_id, "delivered")


def test_sigterm_releases_unfinished_polls(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # One tracker per batch: two batches poll, one RQ job waits for a batch
    # slot and the dispatcher queues the rest, so every kind of claim is held.
    first = start_worker(
        RELAY_BATCH_SIZE="1",
        RELAY_POLL_TIMEOUT_S="10",
        RELAY_LEASE_S="30",
        RELAY_SHUTDOWN_GRACE_S="1",
    )
    jobs = [sim.job("slow:20", "completed") for _ in range(6)]
    registrations = [register(api, job_id, receiver.url()) for job_id in jobs]
    worker_name = wait_for_heartbeat(redis_client)
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while sum(sim.polls(job_id) for job_id in jobs) < 2:
        assert time.monotonic() < deadline, "the worker never polled two jobs"
        time.sleep(0.01)

    status = stop(first)

    schedule = redis_client.zrange(f"{PREFIX}schedule:poll", 0, -1, withscores=True)
    now = redis_now(redis_client)
    assert status == 0
    assert len(schedule) == len(jobs)
    for member, score in schedule:
        assert score <= now, f"{member!r} is still leased until {score}"
    assert redis_client.llen(f"rq:queue:{PREFIX}poll") == 0
    assert redis_client.zscore(f"{PREFIX}workers", worker_name) is None
    [released] = log_events(tmp_path / "worker-0.log", "worker.claims_released")
    assert released["members"] >= 2

    start_worker()
    wait_until_settled(api, registrations)

    deliveries = receiver.verified()
    webhook_ids = [delivery.headers["webhook-id"] for delivery in deliveries]
    assert len(webhook_ids) == len(jobs)
    assert len(set(webhook_ids)) == len(jobs)


def test_sigterm_lets_running_poll_finish(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    first = start_worker(
        RELAY_POLL_TIMEOUT_S="10", RELAY_LEASE_S="30", RELAY_SHUTDOWN_GRACE_S="20"
    )
    job_id = sim.job("slow:1", "completed")
    registration_id = register(api, job_id, receiver.url())
    wait_for_polls(sim, job_id, 1)

    status = stop(first)

    [tracker_key] = redis_client.keys(f"{PREFIX}tracker:*{job_id}")
    tracker = redis_client.hgetall(tracker_key)
    assert status == 0
    assert tracker[b"polls"] == b"1"
    assert tracker[b"last_status_code"] == b"200"
    [released] = log_events(tmp_path / "worker-0.log", "worker.claims_released")
    assert released["members"] == 0
    assert log_events(tmp_path / "worker-0.log", "runtime.work_cancelled") == []

    start_worker()
    wait_until_settled(api, [registration_id])

    assert len(receiver.verified()) == 1
    assert sim.polls(job_id) == 2


def test_sigterm_lets_running_attempt_finish(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/hook", Behaviour(204, delay_s=1))
    first = start_worker(
        RELAY_DELIVERY_TIMEOUT_S="10", RELAY_LEASE_S="30", RELAY_SHUTDOWN_GRACE_S="20"
    )
    registration_id = register(api, sim.job("completed"), receiver.url())
    receiver.wait_started(1)

    status = stop(first)

    view = api.get(f"/v1/registrations/{registration_id}").json()
    assert status == 0
    assert view["state"] == "delivered"
    assert view["delivery"]["attempts"] == 1
    assert len(receiver.verified()) == 1


def test_sigterm_releases_cut_off_attempt(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    # The first request outlasts the grace, and the second worker's gets a 204.
    receiver.script("/hook", Behaviour(204, delay_s=5), Behaviour(204))
    first = start_worker(
        RELAY_DELIVERY_TIMEOUT_S="10", RELAY_LEASE_S="30", RELAY_SHUTDOWN_GRACE_S="1"
    )
    registration_id = register(api, sim.job("completed"), receiver.url())
    receiver.wait_started(1)

    status = stop(first)

    schedule = redis_client.zrange(f"{PREFIX}schedule:deliver", 0, -1, withscores=True)
    now = redis_now(redis_client)
    [(event_id, score)] = schedule
    event = redis_client.hgetall(f"{PREFIX}event:{event_id.decode()}")
    assert status == 0
    assert score <= now
    assert event[b"state"] == b"pending"
    assert event[b"attempts"] == b"0"

    start_worker()
    view = wait_for_state(api, registration_id, "delivered")
    # The cut-off request is recorded once its delay ends: a duplicate that
    # carries the same webhook-id, as at-least-once delivery allows.
    deliveries = receiver.wait_for(2)

    assert view["delivery"]["attempts"] == 1
    assert {delivery.headers["webhook-id"] for delivery in deliveries} == {
        f"msg_{registration_id.removeprefix('reg_')}"
    }
