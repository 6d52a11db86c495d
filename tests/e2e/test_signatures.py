"""Webhook signatures verify byte for byte in two independent implementations.

The receiver checks each delivery with the ``standardwebhooks`` Python
package; the same bytes then go to the ``standardwebhooks`` npm package in
Node.js. Awkward payloads (non-ASCII, emoji, U+2028, quotes, extreme numbers)
must survive both.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SIGNING_SECRET, SimulatorAdmin, WorkerFactory
from tests.receivers import WebhookReceiver
from tests.workers.test_poll import register

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
AWKWARD_METADATA = {
    "text": "naïve café — 日本語",
    "emoji": "🎬🚀👩‍💻",
    "separators": "a\u2028b\u2029c",
    "quotes": "\"'`\\",
    "control": "tab\there\nnew line",
    "huge": 1.7976931348623157e308,
    "tiny": 5e-324,
    "big_int": 2**63 - 1,
    "negative_zero": -0.0,
}


def node_verify(items: list[dict[str, Any]]) -> list[str]:
    """Verify deliveries with the npm package; return its line per item."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "standardwebhooks").is_dir():
        pytest.skip("Node.js or tests/node/node_modules missing; run `make test`")
    result = subprocess.run(
        [node, str(NODE_DIR / "verify.mjs")],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.splitlines()


def as_item(secret: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "secret": secret,
        "body_base64": base64.b64encode(body).decode(),
        "headers": {
            name: headers[name]
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        },
    }


def test_awkward_payload_verifies_in_both(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    reply = api.post(
        "/v1/registrations",
        json={
            "job_id": sim.job("completed"),
            "callback_url": receiver.url(),
            "metadata": AWKWARD_METADATA,
        },
    )
    assert reply.status_code == 201, reply.text

    [delivery] = receiver.wait_for(1)
    tampered = delivery.body.replace("日本語".encode(), "日本人".encode())
    lines = node_verify(
        [
            as_item(SIGNING_SECRET, delivery.body, delivery.headers),
            as_item(SIGNING_SECRET, tampered, delivery.headers),
        ]
    )

    assert delivery.payload is not None
    assert delivery.payload["data"]["metadata"] == AWKWARD_METADATA
    assert json.loads(delivery.body)["data"]["metadata"] == AWKWARD_METADATA
    assert lines[0] == "ok video.completed"
    assert lines[1].startswith("fail")


def test_rotation_verifies_with_either_secret(
    api: httpx.Client,
    start_worker: WorkerFactory,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    new_secret = "whsec_" + base64.b64encode(b"r" * 40).decode()
    start_worker(
        RELAY_SIGNING_SECRET=new_secret,
        RELAY_SIGNING_SECRET_PREVIOUS=SIGNING_SECRET,
        RELAY_SIGNING_SECRET_PREVIOUS_UNTIL="2999-01-01T00:00:00Z",
    )
    register(api, sim.job("failed"), receiver.url())

    [delivery] = receiver.wait_for(1)
    unknown = "whsec_" + base64.b64encode(b"u" * 32).decode()
    lines = node_verify(
        [
            as_item(SIGNING_SECRET, delivery.body, delivery.headers),
            as_item(new_secret, delivery.body, delivery.headers),
            as_item(unknown, delivery.body, delivery.headers),
        ]
    )

    assert lines[0] == "ok video.failed"
    assert lines[1] == "ok video.failed"
    assert lines[2].startswith("fail")
