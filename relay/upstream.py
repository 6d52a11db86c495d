"""The ModelGates client and the rules that classify its responses.

Upstream responses are untrusted: bodies are read up to a cap, JSON is checked
field by field, and only known fields of bounded size reach a webhook.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

from relay.settings import Secret, Settings

RUNNING_STATUSES = frozenset({"pending", "in_progress"})
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "expired"})
MAX_BODY_BYTES = 256 * 1024
MAX_URLS = 32
MAX_TEXT_CHARS = 2048
MAX_RETRY_AFTER_S = 3600.0

Kind = Literal["running", "terminal", "error", "transient"]


@dataclass(frozen=True)
class Outcome:
    """One poll's result, reduced to what the relay acts on.

    ``running`` keeps polling, ``terminal`` ends it with an event, ``error`` is
    retried a bounded number of times, ``transient`` backs off without a bound
    other than the tracker's deadline.
    """

    kind: Kind
    status_code: int | None = None
    snapshot: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    retry_after_s: float | None = None


def video_url(base_url: str, job_id: str) -> str:
    """Return the status URL of a job, with the ID escaped as one path segment."""
    return f"{base_url}/api/v1/videos/{quote(job_id, safe='')}"


def parse_retry_after(value: str | None) -> float | None:
    """Return a Retry-After header as seconds, capped, or None if invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            # "-0000" means UTC with an unknown local zone (RFC 5322).
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def classify(
    job_id: str, status_code: int, headers: httpx.Headers, body: bytes
) -> Outcome:
    """Classify one upstream response without trusting anything in it."""
    if status_code == 429:
        return Outcome(
            "transient",
            status_code,
            reason="rate limited (429)",
            retry_after_s=parse_retry_after(headers.get("retry-after")),
        )
    if status_code >= 500 or status_code == 408:
        return Outcome(
            "transient",
            status_code,
            reason=f"upstream error ({status_code})",
            retry_after_s=parse_retry_after(headers.get("retry-after")),
        )
    if status_code in (401, 403):
        return Outcome("error", status_code, reason=f"unauthorized ({status_code})")
    if status_code == 404:
        return Outcome("error", status_code, reason="job not found (404)")
    if status_code != 200:
        return Outcome("error", status_code, reason=f"unexpected status {status_code}")
    return _classify_body(job_id, body)


def _classify_body(job_id: str, body: bytes) -> Outcome:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Outcome("error", 200, reason="malformed JSON body")
    if not isinstance(document, dict):
        return Outcome("error", 200, reason="body is not a JSON object")

    status = document.get("status")
    if document.get("id") != job_id:
        return Outcome("error", 200, reason="body id does not match the job ID")
    if not isinstance(status, str):
        return Outcome("error", 200, reason="body has no status")
    if status not in RUNNING_STATUSES and status not in TERMINAL_STATUSES:
        return Outcome("error", 200, reason=f"unknown status {status[:40]!r}")

    snapshot = snapshot_of(document)
    kind: Kind = "terminal" if status in TERMINAL_STATUSES else "running"
    return Outcome(kind, 200, snapshot=snapshot)


def snapshot_of(document: dict[str, Any]) -> dict[str, Any]:
    """Keep the known fields of an upstream body, each checked and bounded."""
    snapshot: dict[str, Any] = {"status": document["status"]}
    generation_id = document.get("generation_id")
    if isinstance(generation_id, str):
        snapshot["generation_id"] = generation_id[:MAX_TEXT_CHARS]
    urls = document.get("unsigned_urls")
    if isinstance(urls, list):
        snapshot["unsigned_urls"] = [
            url[:MAX_TEXT_CHARS] for url in urls[:MAX_URLS] if isinstance(url, str)
        ]
    usage = document.get("usage")
    if isinstance(usage, dict):
        cost = usage.get("cost")
        is_byok = usage.get("is_byok")
        snapshot["usage"] = {
            "cost": cost if _is_finite_number(cost) else None,
            "is_byok": is_byok if isinstance(is_byok, bool) else None,
        }
    error = document.get("error")
    if isinstance(error, str):
        snapshot["error"] = error[:MAX_TEXT_CHARS]
    return snapshot


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


class ModelGatesClient:
    """Polls ModelGates over one shared async httpx client."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._base_url = settings.modelgates_base_url
        self._client = client

    async def poll(self, job_id: str, api_key: Secret) -> Outcome:
        """Fetch one job's status with ``api_key``; network failures are transient."""
        url = video_url(self._base_url, job_id)
        auth = {"authorization": f"Bearer {api_key.reveal()}"}
        try:
            async with self._client.stream("GET", url, headers=auth) as response:
                body = await _read_capped(response, MAX_BODY_BYTES)
        except httpx.TimeoutException:
            return Outcome("transient", reason="timed out")
        except httpx.HTTPError as exc:
            return Outcome(
                "transient", reason=f"connection failed: {type(exc).__name__}"
            )
        except (ValueError, UnicodeError) as exc:
            # A key httpx cannot put in a header, such as a non-ASCII one.
            # The exception's text would quote it, so only its type is kept.
            return Outcome("error", reason=f"request not sent: {type(exc).__name__}")
        if body is None:
            return Outcome("error", response.status_code, reason="body too large")
        return classify(job_id, response.status_code, response.headers, body)


async def _read_capped(response: httpx.Response, limit: int) -> bytes | None:
    """Read a body up to ``limit`` bytes; None if it is longer."""
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
