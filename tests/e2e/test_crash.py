"""Workers killed with SIGKILL lose nothing: each registration still ends once."""

from __future__ import annotations

import signal
import time

import httpx
import redis

from tests.conftest import SimulatorAdmin, WorkerFactory
from tests.receivers import Behaviour, WebhookReceiver
from tests.workers.test_deliver import wait_for_state
from tests.workers.test_poll import register, wait_for_polls


def test_worker_killed_mid_poll(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    first = start_worker()
    jobs = [sim.job("slow:2", "pending", "completed") for _ in range(5)]
    registrations = [register(api, job_id, receiver.url()) for job_id in jobs]
    for job_id in jobs:
        wait_for_polls(sim, job_id, 1)

    first.send_signal(signal.SIGKILL)
    first.wait()
    start_worker()

    deliveries = receiver.wait_for(len(jobs), timeout_s=30)
    time.sleep(1)

    delivered_to = [
        d.payload["data"]["registration_id"] for d in deliveries if d.payload
    ]
    assert sorted(delivered_to) == sorted(registrations)
    assert all(d.payload["type"] == "video.completed" for d in deliveries if d.payload)
    assert len(redis_client.keys("relay:event:*")) == len(jobs)
    for registration_id in registrations:
        wait_for_state(api, registration_id, "delivered")


def test_worker_killed_mid_delivery(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    # The first request hangs past the moment the worker dies.
    receiver.script("/hook", Behaviour(204, delay_s=0.8), Behaviour(204))
    first = start_worker(RELAY_DELIVERY_TIMEOUT_S="1.4")
    registration_id = register(api, sim.job("completed"), receiver.url())
    receiver.wait_started(1)

    first.send_signal(signal.SIGKILL)
    first.wait()
    start_worker()

    view = wait_for_state(api, registration_id, "delivered")
    deliveries = receiver.wait_for(2)

    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert {d.payload["type"] for d in deliveries if d.payload} == {"video.completed"}
    assert view["delivery"]["attempts"] == 1
    assert len(redis_client.keys("relay:event:*")) == 1
