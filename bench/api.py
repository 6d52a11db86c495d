"""API: ``POST /v1/registrations`` throughput and latency of ``relay api``.

The load generator (``bench.loadgen``, its own process) keeps N keep-alive
connections busy with a new job ID per request, so every request creates a
registration. The baseline, in the same run, is a bare Litestar app under
uvicorn with the same server settings whose one endpoint does one Redis
write (``bench.bare_api``). Redis is flushed and migrated before each server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from bench import processes, seed
from bench.report import Options, Result, say
from relay.crypto import new_key_text
from relay.redis_server import free_port

API_KEY = "bench-modelgates-key"
TARGET_SHARE = 0.6


@dataclass(frozen=True)
class Sizes:
    """Connections, warm-up and measured duration of each load run."""

    connections: int
    warmup_s: float
    duration_s: float


FULL = Sizes(connections=16, warmup_s=1, duration_s=8)
QUICK = Sizes(connections=8, warmup_s=0.3, duration_s=1)


def load(
    server: subprocess.Popen[bytes],
    port: int,
    token: str,
    sizes: Sizes,
    name: str,
    workdir: Path,
) -> dict[str, Any]:
    """Run the load generator against 127.0.0.1:``port`` and return its summary.

    The summary also has the server process's CPU use over the whole load
    run, warm-up included, as a share of one core.
    """
    log_path = workdir / f"loadgen-{name}.log"
    cpu_before = processes.cpu_seconds(server.pid)
    started = time.monotonic()
    process = processes.start(
        [
            "-m", "bench.loadgen",
            "--port", str(port),
            "--token", token,
            "--connections", str(sizes.connections),
            "--warmup-s", str(sizes.warmup_s),
            "--duration-s", str(sizes.duration_s),
            "--id-prefix", name,
        ],
        log_path,
    )  # fmt: skip
    try:
        process.wait(timeout=sizes.warmup_s + sizes.duration_s + 30)
    finally:
        processes.stop(process)
    server_cpu = (processes.cpu_seconds(server.pid) - cpu_before) / (
        time.monotonic() - started
    )
    if process.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{processes.log_tail(log_path)}")
    return processes.last_json_line(log_path) | {"server_cpu": server_cpu}


def fresh_keyspace(redis_url: str) -> None:
    """Empty the database and apply the migrations again."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    seed.migrate(redis_url)


def bare(redis_url: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Measure the bare Litestar app."""
    fresh_keyspace(redis_url)
    process, port = processes.start_server(
        ["-m", "bench.bare_api", "--redis-url", redis_url],
        workdir / "bare-api.log",
        workdir / "bare-api.port",
    )
    try:
        processes.wait_for_http(f"http://127.0.0.1:{port}/healthz", process, 30)
        return load(process, port, "unused-by-the-bare-app", sizes, "bare", workdir)
    finally:
        processes.stop(process)


def relay(redis_url: str, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Measure ``relay api`` with a tenant's API key, as production clients use it.

    The key's rate limit and the tenant's cap are set far above what the run
    reaches, so their checks run on every request without refusing one.
    """
    fresh_keyspace(redis_url)
    port = free_port()
    env = processes.relay_env(
        redis_url,
        "http://127.0.0.1:9",
        API_KEY,
        RELAY_API_PORT=str(port),
        RELAY_ENCRYPTION_KEYS=new_key_text("bench"),
        RELAY_KEY_RATE_PER_S="1000000",
        RELAY_KEY_BURST="1000000",
        RELAY_TENANT_MAX_ACTIVE="100000000",
    )
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "keys",
            "create",
            "--tenant",
            "bench",
            "--json",
        ],
        env=processes.clean_environ(env),
        cwd=processes.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    api_key = json.loads(created.stdout)["api_key"]
    process = processes.start_relay("api", env, workdir / "relay-api.log")
    try:
        processes.wait_for_http(f"http://127.0.0.1:{port}/readyz", process, 30)
        return load(process, port, api_key, sizes, "relay", workdir)
    finally:
        processes.stop(process)


def run(options: Options) -> Result:
    """Run the API scenario: the bare app, then ``relay api``."""
    sizes = QUICK if options.quick else FULL
    result = Result("api")
    result.settings = {
        "connections": sizes.connections,
        "warmup_s": sizes.warmup_s,
        "duration_s": sizes.duration_s,
        "relay_log_level": "WARNING",
        "relay_auth": "a tenant's API key",
    }
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(processes.redis_server(workdir / "redis"))
        runs = {
            "bare": bare(server.url, sizes, workdir),
            "relay": relay(server.url, sizes, workdir),
        }
    for name, summary in runs.items():
        label = "bare Litestar + one HSET" if name == "bare" else "relay api"
        say(f"api: {label}: {summary['requests_per_s']:,.0f} requests/s")
        result.add(f"{name}_requests_per_s", label, summary["requests_per_s"], "/s")
        result.add(f"{name}_p50_ms", f"{label}: p50 latency", summary["p50_ms"], "ms")
        result.add(f"{name}_p99_ms", f"{label}: p99 latency", summary["p99_ms"], "ms")
        result.add(
            f"{name}_server_cpu",
            f"{label}: server CPU",
            round(summary["server_cpu"] * 100),
            "% of a core",
        )
        statuses = ", ".join(f"{code}: {n}" for code, n in summary["statuses"].items())
        result.add(f"{name}_statuses", f"{label}: status codes", statuses)
        if summary["disconnects"]:
            result.add(
                f"{name}_disconnects", f"{label}: disconnects", summary["disconnects"]
            )

    bare_rate = runs["bare"]["requests_per_s"]
    share = runs["relay"]["requests_per_s"] / bare_rate if bare_rate else None
    rounded_share = None if share is None else round(share, 2)
    result.add("ratio_relay_vs_bare", "relay ÷ bare", rounded_share, "×")
    result.check(
        "registration throughput",
        f"≥ {TARGET_SHARE:g}× the bare Litestar app",
        f"{rounded_share}×",
        share is not None and share >= TARGET_SHARE,
    )
    return result
