"""Fleet metrics move as a worker polls and delivers, read through /metrics."""

from __future__ import annotations

import re
import time

import httpx

from tests.conftest import SimulatorAdmin
from tests.deploy.promql import catalogue
from tests.receivers import WebhookReceiver
from tests.workers.test_deliver import wait_for_state


def sample(text: str, series: str) -> float:
    """Return the value of one exact series line, or 0 when it is absent."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def test_polls_deliveries_and_cost_reach_metrics(
    api: httpx.Client,
    worker: object,
    sim: SimulatorAdmin,
    receiver: WebhookReceiver,
) -> None:
    job_id = sim.job("429:1", "in_progress*6", "completed")
    reply = api.post(
        "/v1/registrations", json={"job_id": job_id, "callback_url": receiver.url()}
    )
    assert reply.status_code == 201, reply.text

    deadline = time.monotonic() + 20
    while True:
        text = api.get("/metrics").text
        if sample(text, 'relay_tracked_jobs{state="in_progress"}') == 1:
            break
        assert time.monotonic() < deadline, "tracker never counted as in_progress"
        time.sleep(0.05)
    receiver.wait_for(1, timeout_s=20)
    wait_for_state(api, reply.json()["id"], "delivered")
    text = api.get("/metrics").text

    assert (
        sample(text, 'relay_polls_total{outcome="transient",status_class="429"}') == 1
    )
    assert sample(text, 'relay_polls_total{outcome="running",status_class="2xx"}') >= 1
    assert sample(text, 'relay_polls_total{outcome="terminal",status_class="2xx"}') == 1
    assert sample(text, "relay_upstream_throttled_total") == 1
    assert sample(text, "relay_upstream_pauses_total") == 1
    polls = sample(text, "relay_upstream_request_duration_seconds_count")
    assert polls >= 3
    assert (
        sample(text, 'relay_upstream_request_duration_seconds_bucket{le="+Inf"}')
        == polls
    )
    assert sample(text, "relay_delivery_duration_seconds_count") == 1
    assert sample(text, "relay_end_to_end_seconds_count") == 1
    assert sample(text, 'relay_upstream_cost_total{tenant="default"}') > 0
    assert sample(text, 'relay_tracked_jobs{state="in_progress"}') == 0
    assert (
        sample(
            text,
            'relay_delivery_attempts_total{outcome="delivered",status_class="2xx"}',
        )
        == 1
    )
    assert sample(text, "relay_poll_backlog") == 0
    # No job ID or URL appears as a label value.
    assert job_id not in text
    assert not re.search(r'="https?://', text)


def test_metrics_page_matches_the_catalogue(api: httpx.Client) -> None:
    text = api.get("/metrics").text
    served = {
        line.split()[2]: line.split()[3]
        for line in text.splitlines()
        if line.startswith("# TYPE ")
    }

    documented = catalogue()

    assert set(served) == set(documented)
    for name, kind in served.items():
        assert documented[name].startswith(kind), name
