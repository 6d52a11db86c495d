"""Delivery against real receivers: retries, redirects, 410, hangs, records."""

from __future__ import annotations

import time

import httpx
import redis

from tests.conftest import SimulatorAdmin
from tests.receivers import Behaviour, WebhookReceiver
from tests.workers.test_poll import register


def wait_for_state(api: httpx.Client, registration_id: str, state: str) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 20
    while True:
        view = api.get(f"/v1/registrations/{registration_id}").json()
        if view["state"] == state:
            return view  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"state stayed {view['state']!r}"
        time.sleep(0.05)


def test_deliver_retries_until_accepted(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/hook", Behaviour(500), Behaviour(503), Behaviour(204))
    registration_id = register(api, sim.job("completed"), receiver.url())

    deliveries = receiver.wait_for(3)
    view = wait_for_state(api, registration_id, "delivered")

    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    assert len({d.body for d in deliveries}) == 1
    timestamps = [int(d.headers["webhook-timestamp"]) for d in deliveries]
    assert timestamps == sorted(timestamps)
    assert view["delivery"]["attempts"] == 3
    assert view["delivery"]["state"] == "delivered"
    attempts = api.get(f"/v1/registrations/{registration_id}/attempts").json()
    assert [a["status_code"] for a in attempts["attempts"]] == [204, 503, 500]
    assert [a["attempt"] for a in attempts["attempts"]] == [3, 2, 1]


def test_deliver_never_follows_redirects(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    redis_client: redis.Redis,
) -> None:
    moved = Behaviour(301, headers=(("location", receiver.url("/elsewhere")),))
    found = Behaviour(302, headers=(("location", receiver.url("/elsewhere")),))
    receiver.script("/hook", moved, found)
    registration_id = register(api, sim.job("completed"), receiver.url())

    view = wait_for_state(api, registration_id, "exhausted")

    assert {d.path for d in receiver.deliveries} == {"/hook"}
    assert view["delivery"]["attempts"] == 4
    assert view["delivery"]["state"] == "exhausted"
    event_id = view["delivery"]["event_id"]
    assert redis_client.hget(f"relay:event:{event_id}", "body")
    assert redis_client.zscore("relay:schedule:deliver", event_id) is None


def test_deliver_stops_on_410(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/hook", Behaviour(410))
    registration_id = register(api, sim.job("failed"), receiver.url())

    view = wait_for_state(api, registration_id, "gone")
    time.sleep(0.6)

    assert view["delivery"]["attempts"] == 1
    assert receiver.started == 1


def test_deliver_times_out_hanging_receiver(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/hook", Behaviour(204, delay_s=2.5), Behaviour(204))
    registration_id = register(api, sim.job("completed"), receiver.url())

    view = wait_for_state(api, registration_id, "delivered")

    attempts = api.get(f"/v1/registrations/{registration_id}/attempts").json()
    first = attempts["attempts"][-1]
    assert first["status_code"] is None
    assert "timed out" in first["error"]
    assert view["delivery"]["attempts"] == 2


def test_deliver_rejects_blocked_address(
    start_api: object,
    migrated: redis.Redis,
    start_worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    # The API allows loopback, the worker does not: the send-time check stops it.
    api = start_api()  # type: ignore[operator]
    start_worker(RELAY_CALLBACK_ALLOW_CIDRS="")  # type: ignore[operator]
    registration_id = register(api, sim.job("completed"), receiver.url())

    view = wait_for_state(api, registration_id, "exhausted")

    attempts = api.get(f"/v1/registrations/{registration_id}/attempts").json()
    assert "not a public address" in attempts["attempts"][0]["error"]
    assert receiver.started == 0
    assert view["delivery"]["attempts"] == 4
