"""The delivery job: one RQ job sends a batch of webhooks concurrently."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from relay import signing, url_safety
from relay.settings import Settings
from relay.store import Store
from relay.upstream import parse_retry_after
from workers.runtime import get_runtime

log = structlog.get_logger(__name__)

RESPONSE_EXCERPT_BYTES = 1024
PER_HOST_CONCURRENCY = 8


def deliver_batch(event_ids: list[str]) -> None:
    """RQ entry point: start a batch of delivery attempts on the event loop."""
    runtime = get_runtime()
    runtime.hand_off(
        deliver_events(
            runtime.store, runtime.webhook_http, runtime.settings, event_ids
        ),
        "deliver",
    )


async def deliver_events(
    store: Store, http: httpx.AsyncClient, settings: Settings, event_ids: list[str]
) -> dict[str, int]:
    """Attempt a batch concurrently, at most a few at a time per host."""
    started = time.perf_counter()
    rows = await store.events(event_ids)
    gates: dict[str, asyncio.Semaphore] = {}
    results = await asyncio.gather(
        *(
            _deliver_one(store, http, settings, gates, event_id, row)
            for event_id, row in zip(event_ids, rows, strict=True)
        ),
        return_exceptions=True,
    )

    counts: Counter[str] = Counter()
    for event_id, result in zip(event_ids, results, strict=True):
        if isinstance(result, BaseException):
            # The event's lease runs out and it is attempted again later.
            log.error("webhook.crashed", event_id=event_id, error=repr(result))
            counts["crashed"] += 1
        else:
            counts[result] += 1
    log.info(
        "webhook.batch_finished",
        size=len(event_ids),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
        **counts,
    )
    return dict(counts)


async def _deliver_one(
    store: Store,
    http: httpx.AsyncClient,
    settings: Settings,
    gates: dict[str, asyncio.Semaphore],
    event_id: str,
    row: dict[bytes, bytes],
) -> str:
    if row.get(b"state") != b"pending":
        await store.client.zrem(store.keys.deliver_schedule, event_id)
        return "skipped"

    url = row[b"callback_url"].decode()
    host = urlsplit(url).hostname or ""
    gate = gates.setdefault(host, asyncio.Semaphore(PER_HOST_CONCURRENCY))
    async with gate:
        attempt = await send(http, settings, event_id, url, row[b"body"])
    attempt["attempt"] = int(row[b"attempts"]) + 1
    return await _record(store, settings, event_id, row, attempt)


async def send(
    http: httpx.AsyncClient, settings: Settings, event_id: str, url: str, body: bytes
) -> dict[str, Any]:
    """POST one signed attempt and return its record; HTTP errors become records."""
    started = time.perf_counter()
    attempt: dict[str, Any] = {"at_ms": int(time.time() * 1000), "status_code": None}
    blocked = await blocked_reason(url, settings)
    if blocked:
        attempt["error"] = f"callback host is not allowed: {blocked}"
        attempt["duration_ms"] = 0.0
        return attempt

    timestamp_s = int(time.time())
    headers = signing.headers(settings.signing_secrets, event_id, timestamp_s, body)
    try:
        async with asyncio.timeout(settings.delivery_timeout_s):
            async with http.stream("POST", url, content=body, headers=headers) as reply:
                attempt["status_code"] = reply.status_code
                attempt["response_excerpt"] = await _excerpt(reply)
                attempt["retry_after"] = reply.headers.get("retry-after")
    except TimeoutError:
        attempt["error"] = f"timed out after {settings.delivery_timeout_s:g} s"
    except httpx.HTTPError as exc:
        attempt["error"] = f"request failed: {type(exc).__name__}"
    attempt["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return attempt


async def blocked_reason(url: str, settings: Settings) -> str | None:
    """Resolve the callback host and return why any of its addresses is blocked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    allowed = settings.callback_allow_cidrs
    reason = url_safety.blocked_host_reason(host, allowed)
    if reason or url_safety.parse_literal(host) is not None:
        return reason
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
    except OSError:
        return None  # The POST fails with its own, clearer connection error.
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        reason = url_safety.blocked_address_reason(address, allowed)
        if reason:
            return f"{host} resolves to {reason}"
    return None


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
    fields = {
        "event_id": event_id,
        "registration_id": registration_id,
        "attempt": attempt["attempt"],
        "status_code": status_code,
        "duration_ms": attempt["duration_ms"],
    }

    if status_code is not None and 200 <= status_code < 300:
        await store.record_attempt(event_id, registration_id, attempt, "delivered")
        log.info("webhook.delivered", **fields)
        return "delivered"
    if status_code == 410:
        await store.record_attempt(event_id, registration_id, attempt, "gone")
        log.warning("webhook.gone", **fields)
        return "gone"

    schedule = settings.delivery_retry_schedule_s
    if attempt["attempt"] > len(schedule):
        await store.record_attempt(event_id, registration_id, attempt, "exhausted")
        log.error("webhook.exhausted", error=attempt.get("error"), **fields)
        return "exhausted"

    delay_s = retry_delay_s(schedule[attempt["attempt"] - 1], settings, retry_after)
    await store.record_attempt(event_id, registration_id, attempt, "retry", delay_s)
    log.warning(
        "webhook.retry_scheduled",
        error=attempt.get("error"),
        delay_s=round(delay_s, 2),
        **fields,
    )
    return "retry"


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
