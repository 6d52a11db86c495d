"""``relay demo``: every outcome end to end, each webhook verified on arrival.

Exits 0 only when every expected webhook arrived at the local receiver with a
signature that the ``standardwebhooks`` library verified.
"""

from __future__ import annotations

import sys
import time

import httpx

from relay.dev import running_stack
from relay.receiver import Receiver, describe
from relay.redis_server import free_port

# (job ID of a scripted simulator job, receiver path, expected event type)
SCENARIOS = (
    ("sim.pending*2.in_progress*2.completed", "/webhooks", "video.completed"),
    ("sim.pending.in_progress*2.failed", "/webhooks", "video.failed"),
    ("sim.pending.cancelled", "/webhooks", "video.cancelled"),
    ("sim.pending*2.expired", "/webhooks", "video.expired"),
    ("sim.404", "/webhooks", "video.tracking_failed"),
    ("sim.500*2.429:1.in_progress.completed", "/webhooks", "video.completed"),
    ("sim.pending.completed", "/fail-once/webhooks", "video.completed"),
)
TIMEOUT_S = 60.0
DEMO_SETTINGS = {
    "RELAY_POLL_FIRST_DELAY_S": "0.2",
    "RELAY_POLL_MAX_INTERVAL_S": "1",
    "RELAY_POLL_MAX_ERRORS": "3",
    "RELAY_DELIVERY_RETRY_SCHEDULE_S": "1,2,5",
    "RELAY_LOG_LEVEL": "ERROR",
}


def run() -> int:
    """Run the walk-through; return the process exit code."""
    with running_stack(free_port(), DEMO_SETTINGS) as stack:
        receiver = Receiver(
            stack.signing_secret,
            on_receive=lambda item: print("received:", describe(item), flush=True),
        ).start()
        try:
            expected = _register_all(stack.api_url, stack.api_token, receiver.url)
            return _wait_for(receiver, expected)
        finally:
            receiver.stop()


def _register_all(api_url: str, token: str, receiver_url: str) -> dict[str, str]:
    expected = {}
    headers = {"authorization": f"Bearer {token}"}
    for job_id, path, event_type in SCENARIOS:
        body = {
            "job_id": job_id,
            "callback_url": f"{receiver_url}{path}",
            "metadata": {"scenario": event_type},
        }
        reply = httpx.post(
            f"{api_url}/v1/registrations", json=body, headers=headers, trust_env=False
        )
        reply.raise_for_status()
        expected[reply.json()["id"]] = event_type
        print(f"registered: {job_id:<40} expecting {event_type}", flush=True)
    return expected


def _wait_for(receiver: Receiver, expected: dict[str, str]) -> int:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        arrived = {
            item.payload["data"]["registration_id"] for item in receiver.received
        }
        if arrived >= set(expected):
            break
        time.sleep(0.2)

    outcomes = {
        item.payload["data"]["registration_id"]: item.payload["type"]
        for item in receiver.received
    }
    wrong = {
        registration_id: (event_type, outcomes.get(registration_id))
        for registration_id, event_type in expected.items()
        if outcomes.get(registration_id) != event_type
    }
    if wrong or receiver.rejected:
        for registration_id, (wanted, got) in wrong.items():
            print(
                f"FAILED: {registration_id} expected {wanted}, got {got or 'nothing'}",
                file=sys.stderr,
            )
        if receiver.rejected:
            print(
                f"FAILED: {receiver.rejected} signatures did not verify",
                file=sys.stderr,
            )
        return 1
    print(f"demo passed: {len(expected)} webhooks received and verified")
    return 0
