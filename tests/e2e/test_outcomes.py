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
