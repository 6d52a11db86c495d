"""``relay status`` shows the fleet on one screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.conftest import SimulatorAdmin
from tests.receivers import Behaviour, WebhookReceiver
from tests.workers.test_deliver import wait_for_state


def relay_status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "status", *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_shows_workers_jobs_and_the_last_hour(
    env: dict[str, str],
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    receiver.script("/fails", Behaviour(status=500), Behaviour(status=204))
    done = api.post(
        "/v1/registrations",
        json={"job_id": sim.job("completed"), "callback_url": receiver.url("/fails")},
    )
    waiting = api.post(
        "/v1/registrations",
        json={"job_id": sim.job("pending"), "callback_url": receiver.url()},
    )
    assert done.status_code == 201
    assert waiting.status_code == 201
    wait_for_state(api, done.json()["id"], "delivered")

    shown = relay_status(env)
    data = json.loads(relay_status(env, "--json").stdout)

    assert shown.returncode == 0, shown.stderr
    assert "workers alive      1" in shown.stdout
    assert "tracked jobs       1" in shown.stdout
    assert "last hour" in shown.stdout
    assert data["workers_alive"] == 1
    assert sum(data["tracked_jobs"].values()) == 1
    assert data["last_hour"]["deliveries"] == 2
    assert data["last_hour"]["deliveries_failed"] == 1
    assert data["delivery_failure_share"] == 0.5
    assert data["last_hour"]["polls"] >= 2


def test_status_explains_unreachable_redis(env: dict[str, str]) -> None:
    shown = relay_status(env | {"REDIS_URL": "redis://127.0.0.1:9/0"})

    assert shown.returncode == 2
    assert "Redis" in shown.stderr
    assert "Traceback" not in shown.stderr
