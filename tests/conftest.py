"""Shared fixtures: a real Redis server, the simulator, the API and workers.

Redis is a server process the session starts (or ``RELAY_TEST_REDIS_URL``
when set), flushed before each test. The simulator and the API run under uvicorn on
loopback; workers are ``relay worker`` subprocesses, so tests can kill them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import migrations
from relay import simulator
from relay.api import create_app
from relay.crypto import new_key_text
from relay.keys import Keys
from relay.redis_server import RedisServer
from relay.settings import Settings
from relay.signing import generate_secret
from tests import secret_check
from tests.receivers import WebhookReceiver, running_receiver
from tests.servers import serve_in_thread

API_TOKEN = "test-api-token-0123456789"
# Test hostnames and what the fake resolver returns for them. The API only
# checks these addresses; nothing in the tests connects to them.
TEST_HOSTS = {
    "hooks.example.com": ["8.8.8.8"],
    "dual.example.com": ["8.8.8.8", "2001:4860:4860::8888"],
    "private.example.com": ["10.0.0.5"],
    "loopback.example.com": ["127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:10.0.0.5"],
    "nat64.example.com": ["64:ff9b::a00:5"],
    "ula.example.com": ["fd12::1"],
    "mixed.example.com": ["8.8.8.8", "192.168.1.1"],
    "cgnat.example.com": ["100.64.0.1"],
}
MODELGATES_KEY = "mg-test-key-abc"
# A second key the simulator accepts, for tenants with their own key.
TENANT_MODELGATES_KEY = "mg-tenant-key-xyz"
ENCRYPTION_KEYS = new_key_text("test1")
SIGNING_SECRET = generate_secret()
PREFIX = "relay:"


def pytest_configure(config: pytest.Config) -> None:
    # The signing secret, API keys and signatures are found by their shape.
    secret_check.install(
        config,
        {
            "API token": [API_TOKEN],
            "ModelGates key": [MODELGATES_KEY, TENANT_MODELGATES_KEY],
            "encryption key": [ENCRYPTION_KEYS.partition(":")[2]],
        },
    )


async def fake_resolver(host: str, port: int) -> list[str]:
    """Resolve only TEST_HOSTS, so no test sends a query to public DNS."""
    try:
        return TEST_HOSTS[host]
    except KeyError:
        raise OSError(f"{host} is not a test host") from None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A separate variable from the relay's REDIS_URL, because every test
    # flushes this database.
    if os.environ.get("RELAY_TEST_REDIS_URL"):
        yield os.environ["RELAY_TEST_REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def simulator_url() -> Iterator[str]:
    app = simulator.create_app(MODELGATES_KEY, TENANT_MODELGATES_KEY)
    with serve_in_thread(app) as url:
        yield url


class SimulatorAdmin:
    """Scripts jobs on the simulator through its admin routes."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, trust_env=False)
        self.http.delete("/_sim/jobs").raise_for_status()

    def job(self, *steps: str) -> str:
        """Script a new job with a unique ID and return the ID."""
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        reply = self.http.put(f"/_sim/jobs/{job_id}", json={"steps": list(steps)})
        reply.raise_for_status()
        return job_id

    def polls(self, job_id: str) -> int:
        """Return how many polls the simulator served for ``job_id``."""
        return int(self.http.get(f"/_sim/jobs/{job_id}").json()["polls"])

    def polls_by_key(self, job_id: str) -> dict[str, int]:
        """Return accepted polls per key: "0" the relay-wide key, "1" the tenant's."""
        summary = self.http.get(f"/_sim/jobs/{job_id}").json()
        return dict(summary["polls_by_key"])


@pytest.fixture
def sim(simulator_url: str) -> Iterator[SimulatorAdmin]:
    admin = SimulatorAdmin(simulator_url)
    yield admin
    admin.http.close()


@pytest.fixture
def env(redis_url: str, simulator_url: str) -> dict[str, str]:
    """Environment for relay processes: fast schedules, loopback allowed."""
    return {
        "REDIS_URL": redis_url,
        "RELAY_KEY_PREFIX": PREFIX,
        "RELAY_API_TOKEN": API_TOKEN,
        "RELAY_SIGNING_SECRET": SIGNING_SECRET,
        "MODELGATES_BASE_URL": simulator_url,
        "MODELGATES_API_KEY": MODELGATES_KEY,
        "RELAY_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
        "RELAY_CALLBACK_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
        "RELAY_POLL_FIRST_DELAY_S": "0.05",
        "RELAY_POLL_MAX_INTERVAL_S": "0.3",
        "RELAY_POLL_TIMEOUT_S": "1",
        "RELAY_POLL_MAX_ERRORS": "3",
        "RELAY_DELIVERY_TIMEOUT_S": "1",
        "RELAY_DELIVERY_RETRY_SCHEDULE_S": "0.2,0.4,0.8",
        "RELAY_LEASE_S": "3",
        "RELAY_SHUTDOWN_GRACE_S": "1",
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def migrated(redis_client: redis.Redis) -> redis.Redis:
    migrations.migrate(redis_client, Keys(PREFIX))
    return redis_client


ApiFactory = Callable[..., httpx.Client]


@pytest.fixture
def start_api(env: dict[str, str]) -> Iterator[ApiFactory]:
    """Start API servers with optional setting overrides; stop them afterwards."""
    stack: list[Any] = []

    def start(**overrides: str) -> httpx.Client:
        settings = Settings.from_env(env | overrides)
        server = serve_in_thread(create_app(settings, fake_resolver))
        base_url = server.__enter__()
        client = httpx.Client(
            base_url=base_url,
            headers={"authorization": f"Bearer {API_TOKEN}"},
            trust_env=False,
        )
        stack.append((server, client))
        return client

    yield start
    for server, client in reversed(stack):
        client.close()
        server.__exit__(None, None, None)


@pytest.fixture
def api(migrated: redis.Redis, start_api: ApiFactory) -> httpx.Client:
    return start_api()


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(
    migrated: redis.Redis,
    env: dict[str, str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[WorkerFactory]:
    """Start ``relay worker`` subprocesses; their logs go to tmp_path."""
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(**overrides: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"worker-{len(processes)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "relay", "worker"],
                env=os.environ | env | overrides,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        processes.append((process, log_path))
        return process

    yield start
    for process, log_path in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        secret_check.scan_file(request, log_path)
        # Shown by pytest when the test fails.
        print(f"--- {log_path.name} ---\n{log_path.read_text()[-6000:]}")  # noqa: T201


@pytest.fixture
def worker(start_worker: WorkerFactory) -> subprocess.Popen[bytes]:
    return start_worker()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with running_receiver(SIGNING_SECRET) as started:
        yield started
