"""``relay status``: the fleet on one screen, read from Redis.

It shows the same figures as ``/metrics`` (``relay.metrics.collect``) plus
the last hour's deliveries and polls from the per-minute counters that
workers keep for two hours.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from relay import metrics
from relay.settings import Settings
from relay.stats import minute_of
from relay.store import Store, decode, translate_errors

WINDOW_MINUTES = 60


@dataclass(frozen=True)
class Status:
    """The figures that ``relay status`` shows."""

    workers_alive: int
    tracked_jobs: dict[str, int]
    poll_backlog: int
    poll_overdue_s: float
    pending_webhooks: int
    delivery_overdue_s: float
    exhausted_webhooks: int
    queue_depth: dict[str, int]
    last_hour: dict[str, int]

    @property
    def delivery_failure_share(self) -> float | None:
        done = self.last_hour.get("deliveries", 0)
        return self.last_hour.get("deliveries_failed", 0) / done if done else None

    @property
    def upstream_error_share(self) -> float | None:
        polls = self.last_hour.get("polls", 0)
        return self.last_hour.get("poll_errors", 0) / polls if polls else None


async def read_status(store: Store) -> Status:
    """Collect the fleet's current figures and the last hour's counts."""
    families = await metrics.collect(store)

    def gauge(name: str) -> float:
        return families[name].total()

    tracked = {
        dict(labels)["state"]: int(value)
        for _, labels, value in families["relay_tracked_jobs"].samples
    }
    queues = {
        dict(labels)["queue"]: int(value)
        for _, labels, value in families["relay_queue_depth"].samples
    }
    return Status(
        workers_alive=int(gauge("relay_workers_alive")),
        tracked_jobs=tracked,
        poll_backlog=int(gauge("relay_poll_backlog")),
        poll_overdue_s=gauge("relay_poll_overdue_seconds"),
        pending_webhooks=int(gauge("relay_pending_webhooks")),
        delivery_overdue_s=gauge("relay_delivery_overdue_seconds"),
        exhausted_webhooks=int(gauge("relay_exhausted_webhooks")),
        queue_depth=queues,
        last_hour=await _last_hour(store),
    )


async def _last_hour(store: Store) -> dict[str, int]:
    now_minute = minute_of(time.time())
    minutes = range(now_minute - WINDOW_MINUTES + 1, now_minute + 1)
    async with translate_errors(), store.client.pipeline(transaction=False) as pipe:
        for minute in minutes:
            pipe.hgetall(store.keys.stats(f"minute:{minute}"))
        rows = await pipe.execute()
    totals: dict[str, int] = {}
    for row in rows:
        for name, value in decode(row).items():
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_status(status: Status, prefix: str) -> str:
    """Return the one-screen text of ``relay status``."""
    tracked = status.tracked_jobs
    hour = status.last_hour
    workers_note = (
        "" if status.workers_alive else "  (none: nothing is polled or delivered)"
    )
    lines = [
        f"modelgates-relay  prefix {prefix}  "
        f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}",
        "",
        f"workers alive      {status.workers_alive}{workers_note}",
        f"tracked jobs       {sum(tracked.values()):,}  "
        f"(pending {tracked.get('pending', 0):,}, "
        f"in_progress {tracked.get('in_progress', 0):,}, "
        f"not yet polled {tracked.get('unknown', 0):,})",
        f"poll backlog       {status.poll_backlog:,} due now, "
        f"most overdue {status.poll_overdue_s:.1f} s",
        f"webhooks           {status.pending_webhooks:,} pending, "
        f"most overdue {status.delivery_overdue_s:.1f} s, "
        f"{status.exhausted_webhooks:,} exhausted",
        f"RQ queues          poll {status.queue_depth.get('poll', 0)}, "
        f"deliver {status.queue_depth.get('deliver', 0)}",
        "",
        "last hour",
        f"  deliveries       {hour.get('deliveries', 0):,} attempts, "
        f"{hour.get('deliveries_failed', 0):,} failed "
        f"({_share(status.delivery_failure_share)})",
        f"  upstream         {hour.get('polls', 0):,} polls, "
        f"{hour.get('poll_errors', 0):,} errors "
        f"({_share(status.upstream_error_share)})",
    ]
    return "\n".join(lines)


def run(settings: Settings, as_json: bool) -> str:
    """Read the status from the configured Redis and return it as text."""

    async def go() -> Status:
        client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        try:
            return await read_status(Store(client, settings.key_prefix))
        finally:
            await client.aclose()

    status = asyncio.run(go())
    if as_json:
        body = asdict(status) | {
            "delivery_failure_share": status.delivery_failure_share,
            "upstream_error_share": status.upstream_error_share,
        }
        return json.dumps(body)
    return format_status(status, settings.key_prefix)
