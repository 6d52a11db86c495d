"""Politeness: the fleet's request rate stays under the limit and obeys a 429.

Three ``relay worker`` processes poll always-due trackers with
``RELAY_UPSTREAM_RATE_PER_S`` set, and the stub records when each status
request arrives. The first figure is the most requests in any one-second
sliding window. Then the stub responds to one request with ``429`` and
``Retry-After``, and the figures are the requests that arrive after a short
grace for requests already in flight, before the Retry-After has passed, and
when the first request after it arrives.
"""

from __future__ import annotations

import bisect
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import processes, seed
from bench.report import Options, Result, say
from bench.stub import StubClient

API_KEY = "bench-modelgates-key"
CALLBACK_URL = "http://127.0.0.1:9/hook"
WORKERS = 3
RATE_TOLERANCE = 1.05
# Requests the workers sent before they saw the 429 may still arrive this late.
IN_FLIGHT_GRACE_S = 0.05


@dataclass(frozen=True)
class Sizes:
    """Rate limit, tracker count, and how long each phase lasts."""

    rate_per_s: int
    trackers: int
    steady_s: float
    retry_after_s: int


FULL = Sizes(rate_per_s=200, trackers=3000, steady_s=10, retry_after_s=10)
QUICK = Sizes(rate_per_s=100, trackers=300, steady_s=1.5, retry_after_s=1)


def max_in_window(times: list[float], width_s: float = 1.0) -> int:
    """Return the most timestamps that fit in any window ``width_s`` long."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def run(options: Options) -> Result:
    """Run the politeness scenario: steady rate, then one 429."""
    sizes = QUICK if options.quick else FULL
    result = Result("politeness")
    result.settings = {
        "workers": WORKERS,
        "rate_per_s": sizes.rate_per_s,
        "trackers": sizes.trackers,
        "steady_s": sizes.steady_s,
        "retry_after_s": sizes.retry_after_s,
        "in_flight_grace_s": IN_FLIGHT_GRACE_S,
    }
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(processes.redis_server(workdir / "redis"))
        stub_process, port = processes.start_server(
            ["-m", "bench.stub", "--record"],
            workdir / "stub.log",
            workdir / "stub.port",
        )
        stack.callback(processes.stop, stub_process)
        stub = StubClient(port)
        stack.callback(stub.close)

        seed.migrate(server.url)
        job_ids = [f"tp-{index}" for index in range(sizes.trackers)]
        seed.register(server.url, API_KEY, job_ids, CALLBACK_URL, 0.0)
        env = processes.relay_env(
            server.url,
            stub.base_url,
            API_KEY,
            RELAY_POLL_FIRST_DELAY_S="0",
            RELAY_POLL_MAX_INTERVAL_S="0.01",
            RELAY_POLL_JITTER="0",
            RELAY_UPSTREAM_RATE_PER_S=str(sizes.rate_per_s),
        )
        workers = [
            processes.start_relay("worker", env, workdir / f"w{index}.log")
            for index in range(WORKERS)
        ]
        stack.callback(processes.stop_many, workers)

        throttled_at = _steady_then_throttle(stub, sizes)
        # Wait past the pause for the first request after it.
        time.sleep(max(0.0, throttled_at + sizes.retry_after_s + 1.0 - time.time()))
        arrivals = stub.arrivals()
    _figures(result, sizes, arrivals, throttled_at)
    return result


def _steady_then_throttle(stub: StubClient, sizes: Sizes) -> float:
    """Let the workers poll through the steady phase, then arm one 429.

    Returns the time at which the stub sent the 429.
    """
    if not processes.wait_until(lambda: stub.video_requests() > 0, 30):
        raise RuntimeError("no worker polled within 30 s")
    time.sleep(sizes.steady_s)
    stub.throttle_next(sizes.retry_after_s)
    if not processes.wait_until(lambda: stub.stats()["throttled_at"] is not None, 10):
        raise RuntimeError("no poll arrived within 10 s to receive the 429")
    return float(stub.stats()["throttled_at"])


def _figures(
    result: Result, sizes: Sizes, arrivals: list[float], throttled_at: float
) -> None:
    ordered = sorted(arrivals)
    before = ordered[: bisect.bisect_left(ordered, throttled_at)]
    steady_rate = len(before) / (before[-1] - before[0]) if len(before) > 1 else 0.0
    peak = max_in_window(before)
    limit = sizes.rate_per_s * RATE_TOLERANCE
    say(f"politeness: at most {peak} requests in any 1 s window (limit {limit:g})")
    result.add("max_requests_in_1s", "most requests in any 1 s window", peak)
    # Bursts show in 1 s windows, a too-high rate in longer ones as well.
    if sizes.steady_s >= 5:
        result.add(
            "max_rate_in_5s",
            "most requests in any 5 s window ÷ 5",
            round(max_in_window(before, 5.0) / 5, 1),
            "/s",
        )
    result.add("mean_rate_per_s", "mean request rate", round(steady_rate, 1), "/s")
    result.check(
        "rate limit",
        f"≤ {limit:g} requests in any 1 s (rate {sizes.rate_per_s}/s + 5 %)",
        str(peak),
        peak <= limit,
    )

    after = ordered[bisect.bisect_right(ordered, throttled_at) :]
    grace_end = throttled_at + IN_FLIGHT_GRACE_S
    pause_end = throttled_at + sizes.retry_after_s
    in_flight = sum(1 for moment in after if moment <= grace_end)
    during = sum(1 for moment in after if grace_end < moment < pause_end)
    later = [moment - throttled_at for moment in after if moment > grace_end]
    first_after_s = round(later[0], 3) if later else None
    say(f"politeness: {during} requests during the Retry-After pause")
    result.add("in_flight_after_429", "requests within 50 ms after the 429", in_flight)
    result.add(
        "requests_during_pause",
        f"requests 50 ms to {sizes.retry_after_s} s after the 429",
        during,
    )
    result.add(
        "first_request_after_429_s", "first request after the 429", first_after_s, "s"
    )
    result.check(
        "429 pause",
        f"0 requests from 50 ms to {sizes.retry_after_s} s after a 429",
        str(during),
        during == 0,
    )
