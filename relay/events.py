"""Webhook bodies: built once per registration and event, then stored."""

from __future__ import annotations

import json
import time
from typing import Any

EVENT_FOR_STATUS = {
    "completed": "video.completed",
    "failed": "video.failed",
    "cancelled": "video.cancelled",
    "expired": "video.expired",
}
TRACKING_FAILED = "video.tracking_failed"
STATUS_CHANGED = "video.status_changed"


def rfc3339_ms(epoch_ms: int) -> str:
    """Format epoch milliseconds as RFC 3339 UTC, e.g. ``2026-01-02T03:04:05.678Z``."""
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def build_body(
    event_type: str,
    registration: dict[str, str],
    snapshot: dict[str, Any],
    polls: int,
    reason: str,
    detected_at_ms: int,
) -> bytes:
    """Serialize one event's body; these exact bytes are signed on every attempt."""
    data: dict[str, Any] = {
        "registration_id": registration["id"],
        "job_id": registration["job_id"],
        "status": snapshot.get("status"),
        "generation_id": snapshot.get("generation_id"),
        "unsigned_urls": snapshot.get("unsigned_urls", []),
        "usage": snapshot.get("usage"),
        "error": snapshot.get("error"),
        "metadata": json.loads(registration.get("metadata") or "{}"),
        "relay": {
            "registered_at": rfc3339_ms(int(registration["created_at_ms"])),
            "detected_at": rfc3339_ms(detected_at_ms),
            "polls": polls,
        },
    }
    if event_type == TRACKING_FAILED:
        data["reason"] = reason
    if event_type == STATUS_CHANGED:
        data["previous_status"] = "pending"
    document = {
        "type": event_type,
        "timestamp": rfc3339_ms(detected_at_ms),
        "data": data,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
