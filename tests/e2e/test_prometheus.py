"""Prometheus reads /metrics of a live API: promtool lints it, a server scrapes it.

Both tools come from Debian's prometheus package, and each test skips
without its binary. The Prometheus server gets a configuration with one
static target on loopback and no alerting, remote write, remote read or
service discovery. Traced with strace, Prometheus 2.42 (Debian) with such a
configuration connected only to its scrape target.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
INSTALL_HINT = "install Debian's prometheus package (.ci/run does that as root)"
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason=f"prometheus not found: {INSTALL_HINT}"
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason=f"promtool not found: {INSTALL_HINT}"
)

CALLBACK_URL = "http://127.0.0.1:9/hook"
CREATED_QUERY = 'relay_registrations_total{result="created"}'
# Safety nets only: Prometheus starts in about a second and scrapes every
# second, so these are reached only when something is broken.
READY_TIMEOUT_S = 30.0
QUERY_TIMEOUT_S = 60.0


def register_jobs(api: httpx.Client, count: int) -> None:
    """Create ``count`` registrations, which adds ``count`` to the created counter."""
    for index in range(count):
        body = {"job_id": f"job-prometheus-{index}", "callback_url": CALLBACK_URL}
        response = api.post("/v1/registrations", json=body)
        assert response.status_code == 201, response.text


def free_loopback_port() -> int:
    # NOTE: another process could take the port between this close and
    # Prometheus binding it. Prometheus then exits, and the test fails
    # showing "address already in use" from its log.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_config(path: Path, target: str) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "relay",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))


@contextmanager
def running_prometheus(tmp_path: Path, target: str) -> Iterator[httpx.Client]:
    """Run a Prometheus server that scrapes ``target``, and yield an API client."""
    assert PROMETHEUS is not None
    config_path = tmp_path / "prometheus.yml"
    write_config(config_path, target)
    port = free_loopback_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5
    )
    try:
        wait_until_ready(client, process, log_path)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_ready(
    client: httpx.Client, process: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"prometheus exited with status {process.returncode}:\n"
                f"{log_path.read_text()}"
            )
        try:
            if client.get("/-/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"prometheus was not ready within {READY_TIMEOUT_S} s:\n"
                f"{log_path.read_text()}"
            )
        time.sleep(0.1)


def query(client: httpx.Client, expression: str) -> list[dict[str, Any]]:
    """Run an instant query and return its vector of samples."""
    response = client.get("/api/v1/query", params={"query": expression})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["data"]["resultType"] == "vector", body
    samples: list[dict[str, Any]] = body["data"]["result"]
    return samples


def wait_for_value(client: httpx.Client, expression: str, expected: float) -> None:
    """Query until the expression returns one sample equal to ``expected``."""
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    samples = query(client, expression)
    while not (len(samples) == 1 and float(samples[0]["value"][1]) == expected):
        if time.monotonic() > deadline:
            targets = client.get("/api/v1/targets").json()["data"]["activeTargets"]
            pytest.fail(
                f"{expression} did not reach {expected} within {QUERY_TIMEOUT_S} "
                f"s: last result {samples}, targets {targets}"
            )
        time.sleep(0.2)
        samples = query(client, expression)


@needs_prometheus
def test_prometheus_scrapes_registration_count(
    api: httpx.Client, tmp_path: Path
) -> None:
    target = f"{api.base_url.host}:{api.base_url.port}"
    registrations = 3

    with running_prometheus(tmp_path, target) as prometheus:
        wait_for_value(prometheus, 'up{job="relay"}', 1)
        register_jobs(api, registrations)
        wait_for_value(prometheus, CREATED_QUERY, registrations)

        [sample] = query(prometheus, CREATED_QUERY)

    assert sample["metric"]["instance"] == target
    assert sample["metric"]["job"] == "relay"


@needs_promtool
def test_promtool_accepts_metrics(api: httpx.Client) -> None:
    assert PROMTOOL is not None
    register_jobs(api, 2)
    repeated = {"job_id": "job-prometheus-0", "callback_url": CALLBACK_URL}
    assert api.post("/v1/registrations", json=repeated).status_code == 200
    body = api.get("/metrics").text

    result = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=body,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = (result.stdout + result.stderr).strip()

    assert 'relay_registrations_total{result="created"} 2' in body
    assert 'relay_registrations_total{result="reused"} 1' in body
    assert result.returncode == 0, problems
    assert problems == "", problems
