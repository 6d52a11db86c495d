"""Polling against the simulator: backoff, faults, sharing and deadlines."""

from __future__ import annotations

import time

import httpx
import redis

from tests.conftest import SimulatorAdmin, WorkerFactory
from tests.receivers import WebhookReceiver


def register(api: httpx.Client, job_id: str, callback_url: str) -> str:
    reply = api.post(
        "/v1/registrations", json={"job_id": job_id, "callback_url": callback_url}
    )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["id"])


def wait_for_polls(sim: SimulatorAdmin, job_id: str, count: int) -> float:
    deadline = time.monotonic() + 20
    while sim.polls(job_id) < count:
        assert time.monotonic() < deadline, f"{job_id} never reached {count} polls"
        time.sleep(0.01)
    return time.monotonic()


def test_poll_429_waits_for_retry_after(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    job_id = sim.job("429:2", "completed")
    register(api, job_id, receiver.url())

    first_poll_at = wait_for_polls(sim, job_id, 1)
    [delivery] = receiver.wait_for(1)
    waited_s = time.monotonic() - first_poll_at

    assert delivery.payload is not None
    assert delivery.payload["type"] == "video.completed"
    assert waited_s >= 1.9
    assert sim.polls(job_id) == 2


def test_poll_timeout_is_retried(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    start_worker(RELAY_POLL_TIMEOUT_S="0.5")
    job_id = sim.job("slow:2", "completed")
    register(api, job_id, receiver.url())

    [delivery] = receiver.wait_for(1)

    assert delivery.payload is not None
    assert delivery.payload["type"] == "video.completed"
    assert sim.polls(job_id) == 2


def test_poll_shared_by_two_registrations(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    job_id = sim.job("pending*3", "completed")
    first = register(api, job_id, receiver.url("/a"))
    second = register(api, job_id, receiver.url("/b"))

    deliveries = receiver.wait_for(2)

    assert {d.payload["data"]["registration_id"] for d in deliveries if d.payload} == {
        first,
        second,
    }
    assert {d.path for d in deliveries} == {"/a", "/b"}
    assert len({d.headers["webhook-id"] for d in deliveries}) == 2
    assert sim.polls(job_id) == 4


def test_poll_deadline_ends_tracking(
    api: httpx.Client,
    start_worker: WorkerFactory,
    start_api: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    start_worker()
    short = start_api(RELAY_POLL_DEADLINE_S="2")  # type: ignore[operator]
    job_id = sim.job("pending")
    register(short, job_id, receiver.url())

    [delivery] = receiver.wait_for(1)

    assert delivery.payload is not None
    assert delivery.payload["type"] == "video.tracking_failed"
    assert "no final status within 2 s" in delivery.payload["data"]["reason"]
    assert delivery.payload["data"]["status"] == "pending"


def test_poll_errors_end_after_max(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    job_id = sim.job("unknown")
    register(api, job_id, receiver.url())

    [delivery] = receiver.wait_for(1)

    assert delivery.payload is not None
    assert delivery.payload["type"] == "video.tracking_failed"
    assert "unknown status 'rendering'" in delivery.payload["data"]["reason"]
    assert sim.polls(job_id) == 3


def test_poll_error_count_resets_on_success(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    job_id = sim.job("404*2", "pending", "404*2", "completed")
    register(api, job_id, receiver.url())

    [delivery] = receiver.wait_for(1)

    assert delivery.payload is not None
    assert delivery.payload["type"] == "video.completed"


def test_delete_stops_tracking(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    job_id = sim.job("pending*3", "completed")
    registration_id = register(api, job_id, receiver.url())
    wait_for_polls(sim, job_id, 1)

    assert api.delete(f"/v1/registrations/{registration_id}").status_code == 204
    polls_at_delete = sim.polls(job_id)
    time.sleep(1.5)

    assert receiver.started == 0
    assert sim.polls(job_id) <= polls_at_delete + 1
    assert redis_client.zcard("relay:schedule:poll") == 0
    assert redis_client.keys("relay:tracker:*") == []
    assert redis_client.keys("relay:reg:*") == []
