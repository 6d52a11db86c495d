"""Delivery isolation: a receiver that never responds must not slow the others.

The benchmark makes two runs. In the first, webhooks for N finished jobs go
to a healthy receiver (the stub, which records arrivals) alone. In the
second, the same N go to it while N more go to a receiver that accepts
connections and never responds. The figure is the healthy receiver's
webhooks per second in each run, and the target is their ratio (at least
0.9).

The events are created before the worker starts, by the workers' own step
that ends a tracker, so both runs measure delivery alone: the same polls
would otherwise add their own work to the run with more jobs.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import processes, seed
from bench.latency import _start_stub
from bench.report import Options, Result, say

API_KEY = "bench-modelgates-key"
TARGET_RATIO = 0.9
FIRST_DELAY_S = 0.2


@dataclass(frozen=True)
class Sizes:
    """Webhooks per receiver and how long to wait for them."""

    events: int
    timeout_s: float


FULL = Sizes(events=1000, timeout_s=60)
QUICK = Sizes(events=100, timeout_s=30)


class SilentReceiver:
    """Accepts TCP connections on loopback, reads nothing and never responds."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        for conn in self.connections:
            conn.close()
        self._listener.close()


def job_ids(prefix: int, count: int) -> list[str]:
    """Return IDs of jobs that ended a minute ago, unique per run."""
    ended_ms = int((time.time() - 60) * 1000)
    return [f"lat-{ended_ms}-{prefix}{index:06d}" for index in range(count)]


def run_once(sizes: Sizes, with_silent: bool) -> tuple[float, int]:
    """Return the healthy receiver's webhooks per second, and how many came."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(processes.redis_server(workdir / "redis"))
        upstream = _start_stub(stack, workdir, "upstream")
        receiver = _start_stub(stack, workdir, "receiver")
        silent = SilentReceiver()
        stack.callback(silent.close)
        seed.migrate(server.url)

        healthy_ids = job_ids(2, sizes.events)
        seed.register(
            server.url,
            API_KEY,
            healthy_ids,
            f"{receiver.base_url}/hook",
            FIRST_DELAY_S,
        )
        finished = list(healthy_ids)
        if with_silent:
            silent_ids = job_ids(1, sizes.events)
            seed.register(
                server.url,
                API_KEY,
                silent_ids,
                f"http://127.0.0.1:{silent.port}/hook",
                FIRST_DELAY_S,
            )
            finished = silent_ids + healthy_ids
        asyncio.run(seed.finish_all(server.url, API_KEY, finished))

        env = processes.relay_env(
            server.url, upstream.base_url, API_KEY, RELAY_UPSTREAM_RATE_PER_S="0"
        )
        started = time.monotonic()
        worker = processes.start_relay("worker", env, workdir / "worker.log")
        stack.callback(processes.stop, worker)
        deadline = started + sizes.timeout_s
        arrived = 0
        while time.monotonic() < deadline:
            arrived = int(receiver.stats()["webhooks"])
            if arrived >= sizes.events:
                break
            time.sleep(0.05)
        # From the first webhook to the last, so the worker's start-up time
        # does not dilute the comparison.
        arrivals = sorted(row[0] for row in receiver.webhooks())
        if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
            return 0.0, arrived
        return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), arrived


def run(options: Options) -> Result:
    """Measure the healthy receiver alone and beside a silent one."""
    sizes = QUICK if options.quick else FULL
    result = Result("isolation")
    result.settings = {"events_per_receiver": sizes.events}

    alone, alone_count = run_once(sizes, with_silent=False)
    say(f"isolation: healthy receiver alone: {alone:,.0f} webhooks/s")
    beside, beside_count = run_once(sizes, with_silent=True)
    say(f"isolation: beside a silent receiver: {beside:,.0f} webhooks/s")

    result.add("alone_per_s", "healthy receiver alone", round(alone), "webhooks/s")
    result.add("alone_count", "healthy receiver alone: webhooks received", alone_count)
    result.add("beside_per_s", "beside a silent receiver", round(beside), "webhooks/s")
    result.add(
        "beside_count", "beside a silent receiver: webhooks received", beside_count
    )
    ratio = beside / alone if alone else 0.0
    result.add("ratio", "beside ÷ alone", round(ratio, 2), "×")
    if not options.quick:
        result.check(
            "isolation: silent receiver",
            f"≥ {TARGET_RATIO}× the healthy receiver's rate alone",
            f"{ratio:.2f}×",
            ratio >= TARGET_RATIO and beside_count >= sizes.events,
        )
    return result
