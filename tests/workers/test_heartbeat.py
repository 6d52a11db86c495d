"""Worker heartbeats: live workers and queue depth in /metrics, the liveness file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis
from rq import Queue

import migrations
from relay.keys import Keys
from relay.redis_server import RedisServer
from tests.conftest import PREFIX, WorkerFactory
from workers.poll import poll_batch

# Safety net only: each wait ends as soon as its condition holds.
WAIT_TIMEOUT_S = 20


def gauge(api: httpx.Client, series: str) -> float:
    """Scrape /metrics and return the value of one series."""
    text = api.get("/metrics").text
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} missing from /metrics"
    return float(match.group(1))


def wait_for_gauge(api: httpx.Client, series: str, value: float) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while (current := gauge(api, series)) != value:
        assert time.monotonic() < deadline, f"{series} stayed {current}, not {value}"
        time.sleep(0.05)


def wait_for_file(path: Path) -> float:
    """Wait until ``path`` exists, and return its modification time."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.stat().st_mtime


def check_worker(
    env: dict[str, str], command: tuple[str, ...] = ("relay", "check-worker")
) -> subprocess.CompletedProcess[str]:
    """Run the liveness check, as ``relay check-worker`` or ``relay.liveness``."""
    module, *arguments = command
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_metrics_count_live_workers(
    api: httpx.Client,
    start_worker: WorkerFactory,
    redis_client: redis.Redis,
) -> None:
    first = start_worker()
    start_worker()
    wait_for_gauge(api, "relay_workers_alive", 2)

    first.send_signal(signal.SIGTERM)
    first.wait(timeout=30)
    alive_after_stop = gauge(api, "relay_workers_alive")
    seconds, _ = redis_client.time()
    redis_client.zadd(f"{PREFIX}workers", {"stopped-long-ago": seconds - 60})

    assert alive_after_stop == 1
    assert gauge(api, "relay_workers_alive") == 1


def test_metrics_report_queue_depth(
    api: httpx.Client,
    start_worker: WorkerFactory,
    redis_client: redis.Redis,
) -> None:
    poll_queue = Queue(f"{PREFIX}poll", connection=redis_client)
    for _ in range(3):
        # A tracker that does not exist: the poll job only drops it.
        poll_queue.enqueue(poll_batch, ["no-cred:no-job"])

    assert gauge(api, 'relay_queue_depth{queue="poll"}') == 3
    assert gauge(api, 'relay_queue_depth{queue="deliver"}') == 0

    start_worker()
    wait_for_gauge(api, 'relay_queue_depth{queue="poll"}', 0)


def test_queue_keys_match_rq(redis_client: redis.Redis) -> None:
    keys = Keys(PREFIX)

    assert keys.poll_queue_key == Queue(keys.poll_queue, connection=redis_client).key
    assert (
        keys.deliver_queue_key == Queue(keys.deliver_queue, connection=redis_client).key
    )


def test_check_worker_follows_heartbeat_file(
    start_worker: WorkerFactory, env: dict[str, str], tmp_path: Path
) -> None:
    heartbeat_file = tmp_path / "alive"
    check_env = env | {"RELAY_WORKER_HEARTBEAT_FILE": str(heartbeat_file)}
    worker = start_worker(RELAY_WORKER_HEARTBEAT_FILE=str(heartbeat_file))
    wait_for_file(heartbeat_file)

    alive = check_worker(check_env)
    probe_alive = check_worker(check_env, ("relay.liveness",))
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    stopped = check_worker(check_env)
    probe_stopped = check_worker(check_env, ("relay.liveness",))

    assert alive.returncode == 0, alive.stderr
    assert "worker alive" in alive.stdout
    assert probe_alive.returncode == 0, probe_alive.stderr
    assert not heartbeat_file.exists()
    assert stopped.returncode == 1
    assert "no heartbeat file" in stopped.stderr
    assert probe_stopped.returncode == 1
    assert "no heartbeat file" in probe_stopped.stderr


def test_check_worker_rejects_stale_file(env: dict[str, str], tmp_path: Path) -> None:
    heartbeat_file = tmp_path / "alive"
    heartbeat_file.touch()
    two_minutes_ago = time.time() - 120
    os.utime(heartbeat_file, (two_minutes_ago, two_minutes_ago))

    result = check_worker(env | {"RELAY_WORKER_HEARTBEAT_FILE": str(heartbeat_file)})

    assert result.returncode == 1
    assert "more than 30 s" in result.stderr


def test_check_worker_needs_file_setting(env: dict[str, str]) -> None:
    result = check_worker(env | {"RELAY_WORKER_HEARTBEAT_FILE": ""})
    probe = check_worker(env | {"RELAY_WORKER_HEARTBEAT_FILE": ""}, ("relay.liveness",))

    assert result.returncode == 2
    assert "RELAY_WORKER_HEARTBEAT_FILE" in result.stderr
    assert probe.returncode == 2
    assert "RELAY_WORKER_HEARTBEAT_FILE" in probe.stderr


def test_worker_removes_old_file_at_start(
    start_worker: WorkerFactory, tmp_path: Path
) -> None:
    heartbeat_file = tmp_path / "alive"
    heartbeat_file.touch()

    # The keyspace under this prefix is not migrated, so the worker exits at
    # start-up and never writes a heartbeat.
    worker = start_worker(
        RELAY_KEY_PREFIX="unmigrated:",
        RELAY_WORKER_HEARTBEAT_FILE=str(heartbeat_file),
    )
    status = worker.wait(timeout=60)

    assert status == 2
    assert not heartbeat_file.exists()


def test_heartbeat_file_outlives_redis_outage(
    start_worker: WorkerFactory, env: dict[str, str], tmp_path: Path
) -> None:
    # A Redis server of this test's own, so stopping it disturbs no other test.
    server = RedisServer(tmp_path / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        migrations.migrate(client, Keys(PREFIX))
        client.close()
        heartbeat_file = tmp_path / "alive"
        start_worker(
            REDIS_URL=server.url, RELAY_WORKER_HEARTBEAT_FILE=str(heartbeat_file)
        )
        wait_for_file(heartbeat_file)

        server.stop()
        stopped_at = time.time()
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while heartbeat_file.stat().st_mtime <= stopped_at:
            assert time.monotonic() < deadline, "the file went stale without Redis"
            time.sleep(0.1)
        during_outage = check_worker(
            env | {"RELAY_WORKER_HEARTBEAT_FILE": str(heartbeat_file)}
        )

        assert during_outage.returncode == 0, during_outage.stderr
    finally:
        server.stop()
