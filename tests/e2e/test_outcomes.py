"""Every upstream path ends in its one webhook, verified by the receiver."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import SimulatorAdmin
from tests.receivers import WebhookReceiver
from tests.workers.test_deliver import wait_for_state

OUTCOMES = [
    (("pending", "in_progress*2", "completed"), "video.completed"),
    (("pending", "failed"), "video.failed"),
    (("in_progress", "cancelled"), "video.cancelled"),
    (("pending*2", "expired"), "video.expired"),
    (("404",), "video.tracking_failed"),
    (("401",), "video.tracking_failed"),
    (("malformed",), "video.tracking_failed"),
    (("unknown",), "video.tracking_failed"),
    (("noid",), "video.tracking_failed"),
    (("500", "429:1", "503", "html", "completed"), "video.completed"),
]


@pytest.mark.parametrize(("steps", "event_type"), OUTCOMES)
def test_outcome_delivers_one_webhook(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
    steps: tuple[str, ...],
    event_type: str,
) -> None:
    job_id = sim.job(*steps)
    reply = api.post(
        "/v1/registrations",
        json={
            "job_id": job_id,
            "callback_url": receiver.url(),
            "metadata": {"order": 7, "note": "née ✓"},
        },
    )
    assert reply.status_code == 201, reply.text
    registration_id = reply.json()["id"]

    [delivery] = receiver.wait_for(1, timeout_s=20)
    payload = delivery.payload
    assert payload is not None
    assert payload["type"] == event_type
    assert payload["data"]["registration_id"] == registration_id
    assert payload["data"]["job_id"] == job_id
    assert payload["data"]["metadata"] == {"order": 7, "note": "née ✓"}
    assert delivery.headers["webhook-id"] == f"msg_{registration_id[4:]}"
    assert json.loads(delivery.body) == payload

    view = wait_for_state(api, registration_id, "delivered")
    assert view["delivery"]["event_type"] == event_type


def test_status_changed_sent_once(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    job_id = sim.job("pending*2", "in_progress*4", "completed")
    opted_in = api.post(
        "/v1/registrations",
        json={
            "job_id": job_id,
            "callback_url": receiver.url("/wants"),
            "events": ["video.status_changed", "video.completed"],
            "metadata": {"order": 8},
        },
    )
    default = api.post(
        "/v1/registrations",
        json={"job_id": job_id, "callback_url": receiver.url("/default")},
    )
    assert opted_in.status_code == 201, opted_in.text
    assert default.status_code == 201, default.text
    assert opted_in.json()["events"] == ["video.status_changed", "video.completed"]

    deliveries = receiver.wait_for(3, timeout_s=20)
    wait_for_state(api, opted_in.json()["id"], "delivered")
    wait_for_state(api, default.json()["id"], "delivered")

    by_path: dict[str, list[str]] = {}
    for delivery in receiver.verified():
        assert delivery.payload is not None
        by_path.setdefault(delivery.path, []).append(delivery.payload["type"])
    # Each event is retried on its own, so arrival order is not promised.
    assert sorted(by_path["/wants"]) == ["video.completed", "video.status_changed"]
    assert by_path["/default"] == ["video.completed"]
    [status_change] = [
        d for d in deliveries if d.payload and d.payload["type"].endswith("changed")
    ]
    assert status_change.payload is not None
    assert status_change.payload["data"]["status"] == "in_progress"
    assert status_change.payload["data"]["previous_status"] == "pending"
    assert status_change.payload["data"]["metadata"] == {"order": 8}
    webhook_ids = {d.headers["webhook-id"] for d in receiver.verified()}
    assert len(webhook_ids) == 3
    view = api.get(f"/v1/registrations/{opted_in.json()['id']}").json()
    [status_delivery] = view["status_deliveries"]
    assert status_delivery["event_type"] == "video.status_changed"
    assert status_delivery["state"] == "delivered"
    assert status_delivery["event_id"].endswith("_in_progress")
    plain = api.get(f"/v1/registrations/{default.json()['id']}").json()
    assert plain["status_deliveries"] == []
