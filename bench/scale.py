"""Scale: Redis memory per tracked registration, and the CPU of an idle worker.

Registrations go through ``Store.register`` with their first poll a month
away, so nothing becomes due. Each has its own job (so its own tracker), a
28-character job ID, a 50-character loopback callback URL, every event type
and ``{"bench": <n>}`` as metadata. Memory is the growth of ``used_memory``
over the registrations, so it includes the schedule and the indexes.

Then one ``relay worker`` runs with nothing due, and its CPU time comes from
``/proc/<pid>/stat`` (user plus system, all threads) over the idle window.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis
from rq import Worker

from bench import processes, seed
from bench.report import Options, Result, say
from relay.keys import Keys

API_KEY = "bench-modelgates-key"
CALLBACK_URL = "http://127.0.0.1:9/webhooks/modelgates/video-finished"
FIRST_DELAY_S = 30 * 86400.0
DEADLINE_S = 60 * 86400.0
MEMORY_TARGET_BYTES = 1024
IDLE_CPU_TARGET = 0.02
KEY_SAMPLES = 200
# An unused loopback port: the worker never polls, because nothing is due.
UNUSED_UPSTREAM = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Sizes:
    """How many registrations, and how long the idle worker is watched."""

    registrations: int
    settle_s: float
    idle_s: float


FULL = Sizes(registrations=100_000, settle_s=3, idle_s=15)
QUICK = Sizes(registrations=2_000, settle_s=1, idle_s=2)


def used_memory(client: redis.Redis) -> int:
    """Return the server's ``used_memory`` in bytes."""
    return int(client.info("memory")["used_memory"])


def key_sizes(client: redis.Redis, keys: Keys, count: int) -> dict[str, float]:
    """Return the mean MEMORY USAGE of each kind of key, over a sample.

    The schedule is one sorted set for all trackers, so its whole size is
    divided by ``count``.
    """
    registration_ids = []
    for key in client.scan_iter(match=keys.registration("*"), count=1000):
        registration_ids.append(key.decode().rsplit(":", 1)[1])
        if len(registration_ids) >= KEY_SAMPLES:
            break
    totals = {"registration": 0, "dedupe": 0, "tracker": 0}
    for registration_id in registration_ids:
        fields = client.hmget(
            keys.registration(registration_id), ["tracker_id", "dedupe_key"]
        )
        tracker_id, dedupe_key = (cast(bytes, value).decode() for value in fields)
        sizes = {
            "registration": keys.registration(registration_id),
            "dedupe": dedupe_key,
            "tracker": keys.tracker(tracker_id),
        }
        for kind, key in sizes.items():
            totals[kind] += int(client.memory_usage(key, samples=0) or 0)
    means = {kind: total / len(registration_ids) for kind, total in totals.items()}
    schedule = int(client.memory_usage(keys.poll_schedule, samples=0) or 0)
    means["poll_schedule_share"] = schedule / count
    index = int(
        client.memory_usage(keys.tenant_registrations("default"), samples=0) or 0
    )
    means["tenant_index_share"] = index / count
    return means


def idle_worker_cpu(
    redis_url: str, client: redis.Redis, workdir: Path, sizes: Sizes
) -> tuple[float, float, float]:
    """Run one idle worker and return CPU shares (its own, Redis's) and commands/s."""
    env = processes.relay_env(redis_url, UNUSED_UPSTREAM, API_KEY)
    worker = processes.start_relay("worker", env, workdir / "worker.log")
    try:
        if not processes.wait_until(lambda: Worker.count(connection=client) > 0, 30):
            raise RuntimeError(
                "relay worker did not register with RQ within 30 s:\n"
                + processes.log_tail(workdir / "worker.log")
            )
        time.sleep(sizes.settle_s)
        cpu_before = processes.cpu_seconds(worker.pid)
        redis_before = processes.redis_cpu_seconds(client)
        commands_before = processes.redis_commands(client)
        started = time.monotonic()
        time.sleep(sizes.idle_s)
        elapsed_s = time.monotonic() - started
        cpu = (processes.cpu_seconds(worker.pid) - cpu_before) / elapsed_s
        redis_cpu = (processes.redis_cpu_seconds(client) - redis_before) / elapsed_s
        commands = (processes.redis_commands(client) - commands_before) / elapsed_s
    finally:
        processes.stop(worker)
    return cpu, redis_cpu, commands


def run(options: Options) -> Result:
    """Run the scale scenario: memory per registration, then idle worker CPU."""
    sizes = QUICK if options.quick else FULL
    result = Result("scale")
    result.settings = {
        "registrations": sizes.registrations,
        "idle_s": sizes.idle_s,
        "callback_url_chars": len(CALLBACK_URL),
        "job_id_chars": 28,
    }
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(processes.redis_server(workdir / "redis"))
        client = redis.Redis.from_url(server.url)
        stack.callback(client.close)
        seed.migrate(server.url)

        before = used_memory(client)
        job_ids = [f"vid_{index:024x}" for index in range(sizes.registrations)]
        seconds = seed.register(
            server.url, API_KEY, job_ids, CALLBACK_URL, FIRST_DELAY_S, DEADLINE_S
        )
        growth = used_memory(client) - before
        say(f"scale: registered {sizes.registrations} jobs in {seconds:.1f} s")
        per_registration = growth / sizes.registrations
        _memory_figures(result, client, sizes, seconds, per_registration)

        cpu, redis_cpu, commands = idle_worker_cpu(server.url, client, workdir, sizes)
        say(f"scale: idle worker used {cpu * 100:.2f} % of a core")
        result.add("idle_worker_cpu_pct", "idle worker: CPU", round(cpu * 100, 2), "%")
        result.add(
            "idle_redis_cpu_pct",
            "idle worker: Redis CPU",
            round(redis_cpu * 100, 2),
            "%",
        )
        result.add(
            "idle_redis_commands_per_s",
            "idle worker: Redis commands/s",
            round(commands, 1),
        )
        result.check(
            "idle worker CPU",
            f"≤ {IDLE_CPU_TARGET * 100:g} % of one core",
            f"{cpu * 100:.2f} %",
            cpu <= IDLE_CPU_TARGET,
        )
    return result


def _memory_figures(
    result: Result,
    client: redis.Redis,
    sizes: Sizes,
    seconds: float,
    per_registration: float,
) -> None:
    result.add(
        "register_per_s",
        "Store.register calls/s while seeding",
        round(sizes.registrations / seconds),
        "/s",
    )
    result.add(
        "bytes_per_registration",
        "used_memory growth per registration",
        round(per_registration),
        "bytes",
    )
    for kind, size in key_sizes(client, Keys(), sizes.registrations).items():
        result.add(
            f"key_bytes_{kind}", f"MEMORY USAGE, {kind} (mean)", round(size), "bytes"
        )
    result.check(
        "memory per registration",
        f"≤ {MEMORY_TARGET_BYTES} bytes, schedule and indexes included",
        f"{per_registration:.0f} bytes",
        per_registration <= MEMORY_TARGET_BYTES,
    )
