"""Throughput: sustained polls/s of ``relay worker`` against its baselines.

Every tracker is always due (first poll at once, at most 0.01 s between
polls, no jitter, no rate limit), so the worker polls as fast as it can. The
stub counts the status requests it receives, and each rate is that count
over a measured window after a warm-up. The baselines run in the same run
against the same stub. One is the naive design: one RQ job per poll, under
RQ's forking ``Worker`` and under ``SimpleWorker``. The others are bare
asyncio loops that keep as many requests in flight as the relay's batch size.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rq import Queue

from bench import naive, processes, seed
from bench.report import Options, Result, say
from bench.stub import StubClient
from relay.keys import Keys
from relay.settings import Settings

API_KEY = "bench-modelgates-key"
CALLBACK_URL = "http://127.0.0.1:9/hook"
RELAY_TARGET_VS_NAIVE = 10.0
RELAY_TARGET_VS_BARE = 0.7
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Sizes:
    """How many trackers, and how long each warm-up and window lasts."""

    trackers: int
    warmup_s: float
    window_s: float
    loop_warmup_s: float
    loop_window_s: float
    # How long a stopped relay worker may finish its batch before SIGKILL.
    stop_timeout_s: float


# Each warm-up starts when the first poll reaches the stub, so process
# start-up is not part of it.
FULL = Sizes(
    trackers=20000,
    warmup_s=2,
    window_s=8,
    loop_warmup_s=1,
    loop_window_s=5,
    stop_timeout_s=5,
)
QUICK = Sizes(
    trackers=1000,
    warmup_s=0.3,
    window_s=0.8,
    loop_warmup_s=0.2,
    loop_window_s=0.5,
    stop_timeout_s=1,
)


@dataclass(frozen=True)
class Window:
    """Poll rate and CPU shares measured over one window."""

    polls_per_s: float
    process_cpu: float
    redis_cpu: float
    redis_commands_per_poll: float | None


def measure(
    stub: StubClient,
    client: redis.Redis,
    processes_: list[subprocess.Popen[bytes]],
    warmup_s: float,
    window_s: float,
) -> Window:
    """Wait for the first poll, warm up, then count polls and CPU over the window.

    CPU figures are shares of one core: the processes' own, summed, and the
    Redis server's.
    """
    polls_at_start = stub.video_requests()
    if not processes.wait_until(
        lambda: stub.video_requests() > polls_at_start, STARTUP_TIMEOUT_S
    ):
        raise RuntimeError(f"no poll arrived within {STARTUP_TIMEOUT_S:g} s")
    time.sleep(warmup_s)
    for process in processes_:
        if process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited during the warm-up")
    polls_before = stub.video_requests()
    cpu_before = sum(processes.cpu_seconds(p.pid) for p in processes_)
    redis_cpu_before = processes.redis_cpu_seconds(client)
    commands_before = processes.redis_commands(client)
    started = time.monotonic()

    time.sleep(window_s)
    polls = stub.video_requests() - polls_before
    elapsed_s = time.monotonic() - started
    cpu = sum(processes.cpu_seconds(p.pid) for p in processes_) - cpu_before
    redis_cpu = processes.redis_cpu_seconds(client) - redis_cpu_before
    commands = processes.redis_commands(client) - commands_before
    return Window(
        polls_per_s=polls / elapsed_s,
        process_cpu=cpu / elapsed_s,
        redis_cpu=redis_cpu / elapsed_s,
        redis_commands_per_poll=commands / polls if polls else None,
    )


def reset_relay(client: redis.Redis, keys: Keys) -> None:
    """Drop queued batches and make every tracker due, between two relay runs."""
    for name in (keys.poll_queue, keys.deliver_queue):
        # rq 3.0 leaves Queue.empty unannotated.
        Queue(name, connection=client).empty()  # type: ignore[no-untyped-call]
    client.zunionstore(keys.poll_schedule, {keys.poll_schedule: 0})


class Bench:
    """The servers one throughput run shares, and the runs that use them."""

    def __init__(self, sizes: Sizes, workdir: Path, redis_url: str, stub_port: int):
        self.sizes = sizes
        self.workdir = workdir
        self.redis_url = redis_url
        self.stub_url = f"http://127.0.0.1:{stub_port}"
        self.stub = StubClient(stub_port)
        self.client = redis.Redis.from_url(redis_url)
        self.relay_env = processes.relay_env(
            redis_url,
            self.stub_url,
            API_KEY,
            RELAY_POLL_FIRST_DELAY_S="0",
            RELAY_POLL_MAX_INTERVAL_S="0.01",
            RELAY_POLL_JITTER="0",
            RELAY_UPSTREAM_RATE_PER_S="0",
        )
        self.batch_size = Settings.from_env(self.relay_env).batch_size

    def relay(self, workers: int) -> Window:
        """Measure ``workers`` relay worker processes."""
        reset_relay(self.client, Keys())
        return self._run(
            [
                processes.start_relay(
                    "worker", self.relay_env, self.log(f"relay-{workers}-{index}")
                )
                for index in range(workers)
            ],
            self.sizes.warmup_s,
            self.sizes.window_s,
            self.sizes.stop_timeout_s,
        )

    def naive(self, worker: str) -> Window:
        """Measure the naive design under one RQ worker of kind ``worker``."""
        queue = f"naive-{worker}"
        job_ids = [f"tp-{index}" for index in range(self.sizes.trackers)]
        naive.seed(self.client, queue, self.stub_url, job_ids)
        process = processes.start(
            ["-m", "bench.naive", "--worker", worker, "--queue", queue],
            self.log(f"naive-{worker}"),
            {"REDIS_URL": self.redis_url},
        )
        # RQ's forking Worker waits long on SIGTERM, and the naive queue is
        # thrown away, so it gets little time before SIGKILL.
        return self._run(
            [process], self.sizes.warmup_s, self.sizes.window_s, stop_timeout_s=1.0
        )

    def loop(self, client_name: str, concurrency: int) -> tuple[Window, dict[str, Any]]:
        """Measure a bare asyncio loop with ``client_name``; return its report too."""
        sizes = self.sizes
        log_path = self.log(f"loop-{client_name}-{concurrency}")
        # Generous, since the loop's own start-up is not part of the warm-up.
        duration_s = sizes.loop_warmup_s + sizes.loop_window_s + 1.0
        process = processes.start(
            [
                "-m", "bench.loops",
                "--client", client_name,
                "--url", self.stub_url,
                "--concurrency", str(concurrency),
                "--jobs", str(sizes.trackers),
                "--duration-s", str(duration_s),
            ],
            log_path,
        )  # fmt: skip
        try:
            window = measure(
                self.stub,
                self.client,
                [process],
                sizes.loop_warmup_s,
                sizes.loop_window_s,
            )
            process.wait(timeout=duration_s + 10)
        finally:
            processes.stop(process)
        report = processes.last_json_line(log_path)
        return window, report

    def _run(
        self,
        started: list[subprocess.Popen[bytes]],
        warmup_s: float,
        window_s: float,
        stop_timeout_s: float,
    ) -> Window:
        try:
            return measure(self.stub, self.client, started, warmup_s, window_s)
        except RuntimeError as exc:
            logs = "\n".join(
                processes.process_log_tail(process, 1500) for process in started
            )
            raise RuntimeError(f"{exc}. The processes' logs end with:\n{logs}") from exc
        finally:
            processes.stop_many(started, stop_timeout_s)

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def close(self) -> None:
        self.stub.close()
        self.client.close()


def run(options: Options) -> Result:
    """Run the throughput scenario and return its figures and targets."""
    sizes = QUICK if options.quick else FULL
    result = Result("throughput")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(processes.redis_server(workdir / "redis"))
        stub_process, stub_port = processes.start_server(
            ["-m", "bench.stub"], workdir / "stub.log", workdir / "stub.port"
        )
        stack.callback(processes.stop, stub_process)
        bench = Bench(sizes, workdir, server.url, stub_port)
        stack.callback(bench.close)

        seed.migrate(server.url)
        job_ids = [f"tp-{index}" for index in range(sizes.trackers)]
        seconds = seed.register(server.url, API_KEY, job_ids, CALLBACK_URL, 0.0)
        say(f"throughput: registered {sizes.trackers} trackers in {seconds:.1f} s")
        result.settings = {
            "trackers": sizes.trackers,
            "warmup_s": sizes.warmup_s,
            "window_s": sizes.window_s,
            "bare_loop_window_s": sizes.loop_window_s,
            "batch_size": bench.batch_size,
            "relay_env": {
                name: value
                for name, value in bench.relay_env.items()
                if name.startswith(("RELAY_POLL", "RELAY_UPSTREAM"))
            },
        }
        _measure_all(bench, result, options.quick)
    return result


def _measure_all(bench: Bench, result: Result, quick: bool) -> None:
    steps: list[tuple[str, str, Callable[[], Window]]] = [
        ("relay_1", "relay, 1 worker process", lambda: bench.relay(1)),
        ("relay_2", "relay, 2 worker processes", lambda: bench.relay(2)),
        ("naive_fork", "naive, RQ forking Worker", lambda: bench.naive("fork")),
        ("naive_simple", "naive, RQ SimpleWorker", lambda: bench.naive("simple")),
    ]
    if quick:
        # Two workers run the same code as one; the quick run saves the time.
        del steps[1]
    windows: dict[str, Window] = {}
    for key, label, step in steps:
        started = time.monotonic()
        window = step()
        windows[key] = window
        say(
            f"throughput: {label}: {window.polls_per_s:,.0f} polls/s "
            f"({time.monotonic() - started:.1f} s)"
        )
        result.add(f"{key}_polls_per_s", label, round(window.polls_per_s), "polls/s")

    relay_1 = windows["relay_1"]
    result.add(
        "relay_1_worker_cpu",
        "relay, 1 worker: worker CPU",
        round(relay_1.process_cpu * 100),
        "% of a core",
    )
    if "relay_2" in windows:
        result.add(
            "relay_2_worker_cpu",
            "relay, 2 workers: worker CPU, both together",
            round(windows["relay_2"].process_cpu * 100),
            "% of a core",
        )
    result.add(
        "relay_1_redis_cpu",
        "relay, 1 worker: Redis CPU",
        round(relay_1.redis_cpu * 100),
        "% of a core",
    )
    if relay_1.polls_per_s and relay_1.redis_cpu:
        redis_cpu_per_poll_s = relay_1.redis_cpu / relay_1.polls_per_s
        result.add(
            "relay_redis_cpu_us_per_poll",
            "relay: Redis CPU per poll",
            round(redis_cpu_per_poll_s * 1e6),
            "µs",
        )
        # An estimate: it assumes Redis CPU per poll stays the same at any load.
        result.add(
            "redis_core_ceiling_polls_per_s",
            "relay: polls/s one Redis core could serve (estimate)",
            round(1 / redis_cpu_per_poll_s),
            "polls/s",
        )
    if relay_1.redis_commands_per_poll is not None:
        result.add(
            "relay_redis_commands_per_poll",
            "relay: Redis commands per poll, Lua scripts' calls included",
            round(relay_1.redis_commands_per_poll, 1),
        )

    batch = bench.batch_size
    loops = [
        ("bare_httpx", "httpx", batch, "the relay's httpx client"),
        ("bare_httpx_aiohttp", "httpx-aiohttp", batch, "httpx-aiohttp transport"),
        ("bare_aiohttp", "aiohttp", batch, "aiohttp"),
    ]
    if not quick:
        # httpx's pool costs more per request the more requests are in flight.
        loops.insert(
            1, ("bare_httpx_10", "httpx", 10, "the relay's httpx client, 10 in flight")
        )
    for key, client_name, concurrency, description in loops:
        window, report = bench.loop(client_name, concurrency)
        label = f"bare asyncio loop, {description}"
        result.settings[f"{key}_client"] = report["client"]
        windows[key] = window
        say(f"throughput: {label}: {window.polls_per_s:,.0f} polls/s")
        result.add(f"{key}_polls_per_s", label, round(window.polls_per_s), "polls/s")
        if report.get("errors"):
            result.add(f"{key}_errors", f"{label}: errors", report["errors"])

    _ratios(windows, result)


def _ratios(windows: dict[str, Window], result: Result) -> None:
    relay = windows["relay_1"].polls_per_s

    def ratio(key: str) -> float | None:
        base = windows[key].polls_per_s
        return round(relay / base, 2) if base else None

    vs_fork = result.add(
        "ratio_vs_naive_fork", "relay ÷ naive (forking)", ratio("naive_fork"), "×"
    )
    result.add(
        "ratio_vs_naive_simple",
        "relay ÷ naive (SimpleWorker)",
        ratio("naive_simple"),
        "×",
    )
    vs_bare = result.add(
        "ratio_vs_bare_httpx", "relay ÷ bare httpx loop", ratio("bare_httpx"), "×"
    )
    result.add(
        "ratio_vs_bare_aiohttp",
        "relay ÷ bare aiohttp loop",
        ratio("bare_aiohttp"),
        "×",
    )
    if "relay_2" in windows and relay:
        result.add(
            "scaling_2_workers",
            "relay, 2 workers ÷ 1 worker",
            round(windows["relay_2"].polls_per_s / relay, 2),
            "×",
        )

    result.check(
        "relay vs naive",
        f"≥ {RELAY_TARGET_VS_NAIVE:g}× the naive design on RQ's forking Worker",
        f"{vs_fork}×",
        vs_fork is not None and vs_fork >= RELAY_TARGET_VS_NAIVE,
    )
    result.check(
        "relay vs bare loop",
        f"≥ {RELAY_TARGET_VS_BARE:g}× a bare asyncio loop, relay's httpx client",
        f"{vs_bare}×",
        vs_bare is not None and vs_bare >= RELAY_TARGET_VS_BARE,
    )
