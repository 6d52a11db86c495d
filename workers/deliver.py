"""The delivery job: one RQ job sends a batch of webhooks concurrently."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from relay import signing
from relay.crypto import SealError
from relay.safe_transport import BlockedAddressError
from relay.settings import Secret, Settings
from relay.stats import StatsBatch
from relay.store import Store
from relay.upstream import parse_retry_after
from workers.keychain import Keychain
from workers.runtime import get_runtime

log = structlog.get_logger(__name__)

RESPONSE_EXCERPT_BYTES = 1024
# An event whose host is saturated waits this long before it is tried again.
SATURATED_DELAY_S = 1.0
# An event whose tenant has no usable signing secret waits this long.
SECRET_RETRY_S = 30.0
# A host's queue may hold as many events as its slots can send within half
# a lease, judged by how long its recent attempts took, and at most this many.
MAX_QUEUED_PER_HOST = 2000
# Weight of the newest attempt in a host's running mean duration.
DURATION_WEIGHT = 0.3
# Hosts whose mean duration is remembered; past this the memory starts over.
MAX_KNOWN_HOSTS = 10000


class Deliverer:
    """Runs webhook attempts as independent tasks, capped per host and in all.

    A batch only starts attempts and returns. Each destination runs at most
    ``delivery_per_host`` attempts at once and queues what those slots can
    send within half a lease, judged by its recent attempt durations (a new
    host counts as slow). Past that, its events go back on the schedule. A
    receiver that never responds so holds only its own slots and a short
    queue, and other hosts' webhooks go out undelayed.
    """

    def __init__(
        self,
        store: Store,
        http: httpx.AsyncClient,
        settings: Settings,
        keychain: Keychain,
    ) -> None:
        self.store = store
        self.http = http
        self.settings = settings
        self.keychain = keychain
        self.admitted: dict[str, int] = {}
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.duration_s: dict[str, float] = {}
        self.tasks: set[asyncio.Task[str]] = set()

    async def deliver_events(self, event_ids: list[str]) -> dict[str, int]:
        """Start an attempt for each due event whose host has room."""
        started = time.perf_counter()
        rows = await self.store.events(event_ids)
        counts: Counter[str] = Counter()
        saturated = []
        for event_id, row in zip(event_ids, rows, strict=True):
            if row.get(b"state") != b"pending":
                await self.store.client.zrem(self.store.keys.deliver_schedule, event_id)
                counts["skipped"] += 1
                continue
            host = destination(row[b"callback_url"].decode())
            if not self._has_room(host):
                saturated.append(event_id)
                continue
            self._start(event_id, host, row)
            counts["started"] += 1

        if saturated:
            await self.store.defer_deliveries(saturated, SATURATED_DELAY_S)
            counts["deferred"] = len(saturated)
        log.info(
            "webhook.batch_started",
            size=len(event_ids),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            **counts,
        )
        return dict(counts)

    async def wait_idle(self) -> None:
        """Wait for every admitted attempt, for a clean shutdown."""
        if self.tasks:
            await asyncio.wait(set(self.tasks))

    def _has_room(self, host: str) -> bool:
        settings = self.settings
        if len(self.tasks) >= settings.delivery_concurrency:
            return False
        expected_s = self.duration_s.get(host, settings.delivery_timeout_s)
        rounds = max(1, int(settings.lease_s / 2 / max(expected_s, 0.001)))
        host_limit = min(settings.delivery_per_host * rounds, MAX_QUEUED_PER_HOST)
        return self.admitted.get(host, 0) < host_limit

    def _learn(self, host: str, duration_s: float) -> None:
        if len(self.duration_s) >= MAX_KNOWN_HOSTS and host not in self.duration_s:
            self.duration_s.clear()
        previous = self.duration_s.get(host, duration_s)
        mean = previous + DURATION_WEIGHT * (duration_s - previous)
        self.duration_s[host] = mean

    def _start(self, event_id: str, host: str, row: dict[bytes, bytes]) -> None:
        self.admitted[host] = self.admitted.get(host, 0) + 1
        slots = self.slots.setdefault(
            host, asyncio.Semaphore(self.settings.delivery_per_host)
        )
        task = asyncio.create_task(self._attempt(event_id, host, row, slots))
        self.tasks.add(task)

        def finished(done: asyncio.Task[str]) -> None:
            self.tasks.discard(done)
            self.admitted[host] -= 1
            if not self.admitted[host]:
                del self.admitted[host]
                del self.slots[host]
            if not done.cancelled() and done.exception() is not None:
                # The event's lease runs out and it is attempted again later.
                # The type only: an exception's text can quote headers.
                log.error(
                    "webhook.crashed",
                    event_id=event_id,
                    error=type(done.exception()).__name__,
                )

        task.add_done_callback(finished)

    async def _attempt(
        self,
        event_id: str,
        host: str,
        row: dict[bytes, bytes],
        slots: asyncio.Semaphore,
    ) -> str:
        url = row[b"callback_url"].decode()
        tenant = row.get(b"tenant", b"default").decode()
        try:
            secrets = await self.keychain.signing_secrets(tenant, time.time())
        except SealError as exc:
            secrets = ()
            log.error("webhook.secret_sealed", tenant=tenant, error=str(exc))
        if not secrets:
            # Without a secret nothing can be signed: wait for the operator's
            # fix rather than spend the event's attempts.
            log.error(
                "webhook.no_signing_secret",
                event_id=event_id,
                registration_id=row[b"registration_id"].decode(),
                tenant=tenant,
            )
            await self.store.defer_deliveries([event_id], SECRET_RETRY_S)
            return "deferred"
        async with slots:
            attempt = await send(
                self.http, self.settings, event_id, url, row[b"body"], secrets
            )
        self._learn(host, attempt["duration_ms"] / 1000)
        attempt["attempt"] = int(row[b"attempts"]) + 1
        attempt["round"] = int(row.get(b"redeliveries", b"0")) + 1
        return await _record(self.store, self.settings, event_id, row, attempt)


def destination(url: str) -> str:
    """Return the ``host:port`` that per-destination limits apply to."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def deliver_batch(event_ids: list[str]) -> None:
    """RQ entry point: start a batch of delivery attempts on the event loop."""
    runtime = get_runtime()
    runtime.hand_off(runtime.deliverer.deliver_events(event_ids), "deliver")


async def send(
    http: httpx.AsyncClient,
    settings: Settings,
    event_id: str,
    url: str,
    body: bytes,
    secrets: Sequence[Secret],
) -> dict[str, Any]:
    """POST one signed attempt and return its record; HTTP errors become records.

    The client's transport rejects a blocked callback address when it connects.
    """
    started = time.perf_counter()
    attempt: dict[str, Any] = {"at_ms": int(time.time() * 1000), "status_code": None}
    timestamp_s = int(time.time())
    headers = signing.headers(secrets, event_id, timestamp_s, body)
    try:
        async with asyncio.timeout(settings.delivery_timeout_s):
            async with http.stream("POST", url, content=body, headers=headers) as reply:
                attempt["status_code"] = reply.status_code
                attempt["retry_after"] = reply.headers.get("retry-after")
                attempt["response_excerpt"] = await _excerpt(reply)
    except TimeoutError:
        # A status that arrived before the deadline still decides the
        # outcome; only the body excerpt was cut short.
        reading = "reading the response body " if attempt["status_code"] else ""
        attempt["error"] = f"timed out {reading}after {settings.delivery_timeout_s:g} s"
    except BlockedAddressError as exc:
        attempt["error"] = str(exc)
    except httpx.HTTPError as exc:
        attempt["error"] = f"request failed: {type(exc).__name__}"
    except (ValueError, UnicodeError) as exc:
        # httpx rejects some URLs that the API accepted (httpx.InvalidURL is
        # not an HTTPError); the attempt fails and the schedule moves on.
        attempt["error"] = f"request not sent: {type(exc).__name__}"
    attempt["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return attempt


async def _excerpt(reply: httpx.Response) -> str:
    """Read only the first bytes of a receiver's response."""
    collected = b""
    async for chunk in reply.aiter_bytes():
        collected += chunk
        if len(collected) >= RESPONSE_EXCERPT_BYTES:
            break
    return collected[:RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace")


async def _record(
    store: Store,
    settings: Settings,
    event_id: str,
    row: dict[bytes, bytes],
    attempt: dict[str, Any],
) -> str:
    registration_id = row[b"registration_id"].decode()
    status_code = attempt["status_code"]
    retry_after = parse_retry_after(attempt.pop("retry_after", None))
    schedule = settings.delivery_retry_schedule_s

    delay_s = 0.0
    if status_code is not None and 200 <= status_code < 300:
        outcome = "delivered"
    elif status_code == 410:
        outcome = "gone"
    elif attempt["attempt"] > len(schedule):
        outcome = "exhausted"
    else:
        outcome = "retry"
        delay_s = retry_delay_s(schedule[attempt["attempt"] - 1], settings, retry_after)

    # Only a pending event changes, so a repeated attempt is neither counted
    # nor logged twice: an exhausted event logs one ERROR line.
    tenant = row.get(b"tenant", b"default").decode()
    changed, since_ms = await store.record_attempt(
        event_id, registration_id, attempt, outcome, delay_s, tenant
    )
    if not changed:
        return "stale"
    status_class = f"{status_code // 100}xx" if status_code else "none"
    stats = StatsBatch()
    stats.count("attempts", f"{outcome}:{status_class}")
    stats.observe("delivery_duration", attempt["duration_ms"] / 1000)
    stats.tick("deliveries")
    if outcome != "delivered":
        stats.tick("deliveries_failed")
    elif row.get(b"kind", b"terminal") != b"progress":
        stats.observe("end_to_end", since_ms / 1000)
    await store.record(stats)
    fields = {
        "event_id": event_id,
        "registration_id": registration_id,
        "job_id": row.get(b"job_id", b"").decode() or None,
        "attempt": attempt["attempt"],
        "status_code": status_code,
        "duration_ms": attempt["duration_ms"],
    }
    if outcome == "delivered":
        log.info("webhook.delivered", **fields)
    elif outcome == "gone":
        log.warning("webhook.gone", **fields)
    elif outcome == "exhausted":
        log.error("webhook.exhausted", error=attempt.get("error"), **fields)
    else:
        log.warning(
            "webhook.retry_scheduled",
            error=attempt.get("error"),
            delay_s=round(delay_s, 2),
            **fields,
        )
    return outcome


def retry_delay_s(
    base_s: float, settings: Settings, retry_after_s: float | None
) -> float:
    """Return the wait before the next attempt: the schedule, jittered.

    A receiver's Retry-After (already capped at an hour) only lengthens it.
    """
    jitter = settings.delivery_jitter
    delay_s = base_s * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311 - not crypto
    if retry_after_s is not None:
        delay_s = max(retry_after_s, delay_s)
    return delay_s
