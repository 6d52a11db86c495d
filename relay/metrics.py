"""Prometheus text for ``GET /metrics``: the whole fleet, read from Redis.

Counters are the ``stats:*`` hashes that API processes and workers add to;
gauges are read from the schedules at scrape time. Label values come from
fixed sets (outcomes, event types, status classes), never from job IDs or
URLs, so the series count stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable

from relay.keys import WORKER_ALIVE_S
from relay.store import Store, translate_errors

# name, stats hash, label names that the hash field splits into, help text
COUNTERS = (
    (
        "relay_registrations_total",
        "registrations",
        ("result",),
        "Registration requests by result (created, reused).",
    ),
    (
        "relay_polls_total",
        "polls",
        ("outcome",),
        "Upstream polls by outcome (running, terminal, error, transient, ...).",
    ),
    (
        "relay_events_total",
        "events",
        ("type",),
        "Webhook events created, by event type.",
    ),
    (
        "relay_delivery_attempts_total",
        "attempts",
        ("outcome", "status_class"),
        "Webhook delivery attempts by outcome and HTTP status class.",
    ),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = [
        f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)
    ]
    return "{" + ",".join(pairs) + "}" if pairs else ""


async def render(store: Store) -> str:
    """Return every metric in the Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    for name, stats, label_names, help_text in COUNTERS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for field, value in sorted((await store.counters(stats)).items()):
            values = field.split(":", len(label_names) - 1)
            if len(values) == len(label_names):
                lines.append(f"{name}{_labels(label_names, values)} {value}")

    for name, help_text, readings in await _gauges(store):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for labels, reading in readings:
            lines.append(f"{name}{labels} {reading:g}")
    return "\n".join(lines) + "\n"


async def _gauges(store: Store) -> list[tuple[str, str, list[tuple[str, float]]]]:
    """Return each gauge's name, help text and its (labels, value) readings."""
    keys = store.keys
    async with translate_errors(), store.client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zcard(keys.poll_schedule)
        pipe.zrange(keys.poll_schedule, 0, 0, withscores=True)
        pipe.zcard(keys.deliver_schedule)
        pipe.zrange(keys.deliver_schedule, 0, 0, withscores=True)
        pipe.scard(keys.exhausted)
        pipe.zrange(keys.workers, 0, -1, withscores=True)
        pipe.llen(keys.poll_queue_key)
        pipe.llen(keys.deliver_queue_key)
        (
            clock,
            trackers,
            poll_head,
            events,
            deliver_head,
            exhausted,
            heartbeats,
            poll_jobs,
            deliver_jobs,
        ) = await pipe.execute()
    now = int(clock[0]) + int(clock[1]) / 1_000_000
    alive = sum(1 for _, beat_at in heartbeats if now - beat_at <= WORKER_ALIVE_S)
    return [
        ("relay_tracked_jobs", "Upstream jobs being polled.", [("", trackers)]),
        (
            "relay_poll_overdue_seconds",
            "How long the most overdue poll has waited past its due time.",
            [("", _overdue_s(poll_head, now))],
        ),
        ("relay_pending_webhooks", "Webhook events awaiting delivery.", [("", events)]),
        (
            "relay_delivery_overdue_seconds",
            "How long the most overdue delivery attempt has waited.",
            [("", _overdue_s(deliver_head, now))],
        ),
        (
            "relay_exhausted_webhooks",
            "Events whose retries ran out; redeliver them through the API.",
            [("", exhausted)],
        ),
        (
            "relay_workers_alive",
            f"Workers whose last heartbeat is at most {WORKER_ALIVE_S:g} s old.",
            [("", alive)],
        ),
        (
            "relay_queue_depth",
            "RQ jobs (batches of polls or deliveries) waiting in each queue.",
            [
                (_labels(["queue"], ["poll"]), poll_jobs),
                (_labels(["queue"], ["deliver"]), deliver_jobs),
            ],
        ),
    ]


def _overdue_s(head: list[tuple[bytes, float]], now: float) -> float:
    if not head:
        return 0.0
    return max(0.0, now - head[0][1])
