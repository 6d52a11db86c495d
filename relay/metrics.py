"""Prometheus text for ``GET /metrics``: the whole fleet, read from Redis.

Counters and histograms are the ``stats:*`` hashes that API processes and
workers add to (``relay.stats``); gauges are read from the schedules and
heartbeats at scrape time. Label values come from fixed sets (outcomes,
event types, status classes, tenant names that operators create), never
from job IDs or URLs, so the series count stays bounded. When Redis cannot
be read, the page still responds, with ``relay_redis_up 0`` and the
process's own HTTP metrics. ``collect`` returns the same figures as data for
``relay status``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relay.errors import StoreUnavailableError
from relay.http_observe import HttpMetrics
from relay.keys import WORKER_ALIVE_S
from relay.stats import HISTOGRAMS, LATENCY_BUCKETS_S
from relay.store import Store, decode, translate_errors

Labels = tuple[tuple[str, str], ...]

# name, stats hash, label names that the hash field splits into, help text
COUNTERS = (
    (
        "relay_registrations_total",
        "registrations",
        ("result",),
        "Registration requests by result (created, reused, invalid, "
        "rate_limited, over_cap).",
    ),
    (
        "relay_polls_total",
        "polls",
        ("outcome", "status_class"),
        "Upstream polls by outcome and response status class.",
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
# name, stats:hist name, help text
HISTOGRAM_FAMILIES = (
    (
        "relay_upstream_request_duration_seconds",
        "upstream_request_duration",
        "Duration of one upstream poll request.",
    ),
    (
        "relay_delivery_duration_seconds",
        "delivery_duration",
        "Duration of one webhook delivery attempt.",
    ),
    (
        "relay_end_to_end_seconds",
        "end_to_end",
        "From the poll that saw a job's final status to the receiver's 2xx.",
    ),
)
TRACKED_STATES = ("pending", "in_progress", "unknown")


@dataclass
class Family:
    """One metric: its name, type, help text and samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, tuple(labels.items()), value))

    def total(self, **match: str) -> float:
        """Return the sum of the samples whose labels include ``match``."""
        return sum(
            value
            for suffix, labels, value in self.samples
            if not suffix and set(match.items()) <= set(labels)
        )


async def collect(store: Store) -> dict[str, Family]:
    """Read every fleet-wide metric from Redis, by name."""
    families: dict[str, Family] = {}
    for name, stats, label_names, help_text in COUNTERS:
        family = families[name] = Family(name, "counter", help_text)
        for field_name, value in sorted((await store.counters(stats)).items()):
            values = field_name.split(":", len(label_names) - 1)
            if len(values) == len(label_names):
                family.add(value, **dict(zip(label_names, values, strict=True)))

    async with translate_errors(), store.client.pipeline(transaction=False) as pipe:
        pipe.hgetall(store.keys.stats("upstream"))
        pipe.hgetall(store.keys.stats("cost"))
        pipe.hgetall(store.keys.stats("tracked"))
        for _, hist_name, _ in HISTOGRAM_FAMILIES:
            pipe.hgetall(store.keys.stats(f"hist:{hist_name}"))
        upstream, cost, tracked, *hists = [decode(raw) for raw in await pipe.execute()]

    for name, key, help_text in (
        ("relay_upstream_throttled_total", "throttled", "Upstream 429 responses."),
        (
            "relay_upstream_pauses_total",
            "pauses",
            "Fleet-wide pauses of a ModelGates key that a 429 started.",
        ),
    ):
        families[name] = Family(name, "counter", help_text)
        families[name].add(int(upstream.get(key, 0)))

    cost_family = families["relay_upstream_cost_total"] = Family(
        "relay_upstream_cost_total",
        "counter",
        "Sum of the usage.cost values ModelGates reported, by tenant.",
    )
    for tenant, total in sorted(cost.items()):
        cost_family.add(float(total), tenant=tenant)

    for (name, hist_name, help_text), raw in zip(
        HISTOGRAM_FAMILIES, hists, strict=True
    ):
        families[name] = _histogram(name, help_text, HISTOGRAMS[hist_name], raw)

    tracked_family = Family(
        "relay_tracked_jobs",
        "gauge",
        "Upstream jobs being polled, by the status of their last poll.",
    )
    for state in TRACKED_STATES:
        tracked_family.add(max(0, int(tracked.get(state, 0))), state=state)
    families[tracked_family.name] = tracked_family
    for family in await _gauges(store):
        families[family.name] = family
    return families


def _histogram(
    name: str, help_text: str, bounds: Iterable[float], raw: Mapping[str, str]
) -> Family:
    family = Family(name, "histogram", help_text)
    cumulative = 0
    for bound in bounds:
        cumulative += int(raw.get(f"le:{bound:g}", 0))
        family.add(cumulative, "_bucket", le=f"{bound:g}")
    count = int(raw.get("count", 0))
    family.add(count, "_bucket", le="+Inf")
    family.add(float(raw.get("sum", 0.0)), "_sum")
    family.add(count, "_count")
    return family


async def _gauges(store: Store) -> list[Family]:
    keys = store.keys
    async with translate_errors(), store.client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(keys.poll_schedule, 0, 0, withscores=True)
        pipe.zcard(keys.deliver_schedule)
        pipe.zrange(keys.deliver_schedule, 0, 0, withscores=True)
        pipe.scard(keys.exhausted)
        pipe.zrange(keys.workers, 0, -1, withscores=True)
        pipe.llen(keys.poll_queue_key)
        pipe.llen(keys.deliver_queue_key)
        (
            clock,
            poll_head,
            events,
            deliver_head,
            exhausted,
            heartbeats,
            poll_jobs,
            deliver_jobs,
        ) = await pipe.execute()
    now = int(clock[0]) + int(clock[1]) / 1_000_000
    async with translate_errors():
        backlog = await store.client.zcount(keys.poll_schedule, "-inf", now)
    alive = sum(1 for _, beat_at in heartbeats if now - beat_at <= WORKER_ALIVE_S)
    gauges = [
        ("relay_poll_backlog", "Trackers whose poll is due now.", backlog),
        (
            "relay_poll_overdue_seconds",
            "How long the most overdue poll has waited past its due time.",
            _overdue_s(poll_head, now),
        ),
        ("relay_pending_webhooks", "Webhook events awaiting delivery.", events),
        (
            "relay_delivery_overdue_seconds",
            "How long the most overdue delivery attempt has waited.",
            _overdue_s(deliver_head, now),
        ),
        (
            "relay_exhausted_webhooks",
            "Events whose retries ran out; redeliver them through the API.",
            exhausted,
        ),
        (
            "relay_workers_alive",
            f"Workers whose last heartbeat is at most {WORKER_ALIVE_S:g} s old.",
            alive,
        ),
    ]
    families = []
    for name, help_text, value in gauges:
        family = Family(name, "gauge", help_text)
        family.add(float(value))
        families.append(family)
    depth = Family(
        "relay_queue_depth",
        "gauge",
        "RQ jobs (batches of polls or deliveries) waiting in each queue.",
    )
    depth.add(poll_jobs, queue="poll")
    depth.add(deliver_jobs, queue="deliver")
    families.append(depth)
    return families


def _overdue_s(head: list[tuple[bytes, float]], now: float) -> float:
    if not head:
        return 0.0
    return max(0.0, now - head[0][1])


def process_families(http: HttpMetrics) -> list[Family]:
    """Return this API process's own request metrics."""
    requests = Family(
        "relay_http_requests_total",
        "counter",
        "API requests this process served, by method, route and status class.",
    )
    for (method, route, hundred), count in sorted(http.requests.items()):
        requests.add(count, method=method, route=route, status_class=f"{hundred}xx")
    durations = Family(
        "relay_http_request_duration_seconds",
        "histogram",
        "API request duration in this process, by route.",
    )
    for route in sorted(http.counts):
        cumulative = 0
        for index, bound in enumerate(LATENCY_BUCKETS_S):
            cumulative += http.buckets[(route, index)]
            durations.add(cumulative, "_bucket", route=route, le=f"{bound:g}")
        durations.add(http.counts[route], "_bucket", route=route, le="+Inf")
        durations.add(http.sums[route], "_sum", route=route)
        durations.add(http.counts[route], "_count", route=route)
    return [requests, durations]


async def render(store: Store, http: HttpMetrics) -> str:
    """Return every metric in the Prometheus text exposition format 0.0.4."""
    redis_up = Family(
        "relay_redis_up", "gauge", "1 when this scrape could read Redis, 0 when not."
    )
    try:
        fleet = list((await collect(store)).values())
        redis_up.add(1)
    except StoreUnavailableError:
        fleet = []
        redis_up.add(0)
    lines: list[str] = []
    for family in [redis_up, *fleet, *process_families(http)]:
        lines += [
            f"# HELP {family.name} {family.help}",
            f"# TYPE {family.name} {family.kind}",
        ]
        for suffix, labels, value in family.samples:
            lines.append(f"{family.name}{suffix}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels) + "}"


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))
