"""Delivery against real receivers: retries, redirects, 410, hangs, records."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from tests.conftest import SIGNING_SECRET, SimulatorAdmin, WorkerFactory
from tests.receivers import Behaviour, WebhookReceiver, running_raw_server
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


def drip(status_line: bytes) -> Callable[[socket.socket], None]:
    """Reply with headers at once, then a body at one byte a second."""

    def reply(conn: socket.socket) -> None:
        conn.sendall(status_line + b"\r\ncontent-length: 60\r\n\r\n")
        for _ in range(60):
            conn.sendall(b"x")
            time.sleep(1)

    return reply


def never_answer(conn: socket.socket) -> None:
    time.sleep(5)


def huge_body(conn: socket.socket) -> None:
    size = 100 * 1024 * 1024
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
    chunk = b"y" * 65536
    for _ in range(size // len(chunk)):
        conn.sendall(chunk)


def test_deliver_honours_retry_after(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    limited = Behaviour(429, headers=(("retry-after", "2"),))
    receiver.script("/hook", limited, Behaviour(204))
    register(api, sim.job("completed"), receiver.url())

    first, second = receiver.wait_for(2)

    assert second.received_at - first.received_at >= 1.9


def test_deliver_deadline_stops_drip(
    api: httpx.Client, worker: object, sim: SimulatorAdmin
) -> None:
    with running_raw_server(drip(b"HTTP/1.1 500 Oops")) as server:
        registration_id = register(api, sim.job("completed"), server.url())
        attempts = wait_for_attempts(api, registration_id, 1)

    first = attempts[-1]
    assert first["status_code"] == 500
    assert "timed out reading the response body" in first["error"]
    assert first["duration_ms"] < 1600


def test_deliver_keeps_first_kib_of_huge_body(
    api: httpx.Client, worker: object, sim: SimulatorAdmin
) -> None:
    with running_raw_server(huge_body) as server:
        registration_id = register(api, sim.job("completed"), server.url())
        view = wait_for_state(api, registration_id, "delivered")

    attempts = api.get(f"/v1/registrations/{registration_id}/attempts").json()
    excerpt = attempts["attempts"][0]["response_excerpt"]
    assert len(excerpt) == 1024
    assert set(excerpt) == {"y"}
    assert view["delivery"]["attempts"] == 1


def test_deliver_silent_host_delays_no_other(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    start_worker(RELAY_DELIVERY_PER_HOST="2", RELAY_DELIVERY_TIMEOUT_S="1.4")
    with running_raw_server(never_answer) as silent:
        for _ in range(10):
            register(api, sim.job("completed"), silent.url())
        for _ in range(10):
            register(api, sim.job("completed"), receiver.url())
        started = time.monotonic()
        receiver.wait_for(10, timeout_s=10)
        elapsed_s = time.monotonic() - started

        assert elapsed_s < 3
        assert silent.connections <= 4


def test_redeliver_sends_same_webhook_id(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    registration_id = register(api, sim.job("completed"), receiver.url())
    [first] = receiver.wait_for(1)
    wait_for_state(api, registration_id, "delivered")

    reply = api.post(f"/v1/registrations/{registration_id}/redeliver")
    first_again, second = receiver.wait_for(2)
    view = wait_for_state(api, registration_id, "delivered")

    assert reply.status_code == 202
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert second.body == first.body
    assert int(second.headers["webhook-timestamp"]) >= int(
        first.headers["webhook-timestamp"]
    )
    attempts = api.get(f"/v1/registrations/{registration_id}/attempts").json()
    assert [a["round"] for a in attempts["attempts"]] == [2, 1]
    assert view["delivery"]["attempts"] == 1


def test_redeliver_revives_exhausted_event(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/hook", Behaviour(500))
    registration_id = register(api, sim.job("failed"), receiver.url())
    wait_for_state(api, registration_id, "exhausted")
    receiver.script("/hook", Behaviour(204))

    reply = api.post(f"/v1/registrations/{registration_id}/redeliver")
    view = wait_for_state(api, registration_id, "delivered")

    assert reply.status_code == 202
    assert view["delivery"]["state"] == "delivered"
    assert len({d.headers["webhook-id"] for d in receiver.verified()}) == 1


def test_redeliver_before_outcome_conflicts(
    api: httpx.Client, sim: SimulatorAdmin, receiver: WebhookReceiver
) -> None:
    registration_id = register(api, sim.job("pending"), receiver.url())

    reply = api.post(f"/v1/registrations/{registration_id}/redeliver")

    assert reply.status_code == 409
    assert "no webhook yet" in reply.json()["detail"]
    assert api.post("/v1/registrations/reg_missing/redeliver").status_code == 404


@pytest.mark.parametrize("in_grace", [True, False])
def test_rotation_grace_signs_with_both(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    in_grace: bool,
) -> None:
    new_secret = "whsec_" + base64.b64encode(b"n" * 32).decode()
    until = "2999-01-01T00:00:00Z" if in_grace else "2000-01-01T00:00:00Z"
    start_worker(
        RELAY_SIGNING_SECRET=new_secret,
        RELAY_SIGNING_SECRET_PREVIOUS=SIGNING_SECRET,
        RELAY_SIGNING_SECRET_PREVIOUS_UNTIL=until,
    )
    register(api, sim.job("completed"), receiver.url())
    receiver.wait_started(1)
    time.sleep(0.3)

    [delivery] = receiver.deliveries
    signatures = delivery.headers["webhook-signature"].split(" ")
    assert Webhook(new_secret).verify(delivery.body, delivery.headers)
    assert len(signatures) == (2 if in_grace else 1)
    assert delivery.verified is in_grace


def wait_for_attempts(
    api: httpx.Client, registration_id: str, count: int
) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + 20
    while True:
        reply = api.get(f"/v1/registrations/{registration_id}/attempts").json()
        if len(reply["attempts"]) >= count:
            return reply["attempts"]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, "attempts never recorded"
        time.sleep(0.05)


def test_exhausted_event_is_counted_once(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/hook", Behaviour(500))
    registration_id = register(api, sim.job("completed"), receiver.url())
    wait_for_state(api, registration_id, "exhausted")

    metrics = api.get("/metrics").text
    api.post(f"/v1/registrations/{registration_id}/redeliver")
    after_redeliver = api.get("/metrics").text

    assert "relay_exhausted_webhooks 1" in metrics
    assert (
        'relay_delivery_attempts_total{outcome="exhausted",status_class="5xx"} 1'
        in metrics
    )
    assert (
        'relay_delivery_attempts_total{outcome="retry",status_class="5xx"} 3' in metrics
    )
    assert 'relay_events_total{type="video.completed"} 1' in metrics
    assert "relay_exhausted_webhooks 0" in after_redeliver
