"""Request and response shapes of the HTTP API, and how stored state maps to them."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from relay.events import rfc3339_ms
from relay.registrations import (
    STATUS_CHANGED,
    NewRegistration,
    decode_events,
    status_event_id_for,
)
from relay.store import Store


class RegistrationCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/registrations``."""

    job_id: str
    callback_url: str
    events: list[str] | None = None
    metadata: dict[str, Any] | None = None


class Upstream(msgspec.Struct):
    """The last response ModelGates returned for the job."""

    polls: int
    snapshot: dict[str, Any] | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    last_polled_at: str | None = None


class Attempt(msgspec.Struct):
    """One delivery attempt of a webhook."""

    attempt: int
    at: str
    status_code: int | None
    duration_ms: float
    error: str | None = None
    response_excerpt: str | None = None
    round: int = 1


class Delivery(msgspec.Struct):
    """The registration's webhook and its delivery state."""

    event_id: str
    event_type: str
    state: str
    attempts: int
    last_attempt: Attempt | None = None


class Registration(msgspec.Struct):
    """A registration as clients see it."""

    id: str
    job_id: str
    callback_url: str
    events: list[str]
    metadata: dict[str, Any]
    state: str
    created_at: str
    updated_at: str
    upstream: Upstream
    delivery: Delivery | None = None
    reason: str | None = None
    # The video.status_changed webhooks of a registration that asked for them.
    status_deliveries: list[Delivery] = msgspec.field(default_factory=list)


class RegistrationSummary(msgspec.Struct):
    """A registration as listed: read one by its ID for upstream and delivery."""

    id: str
    job_id: str
    callback_url: str
    events: list[str]
    metadata: dict[str, Any]
    state: str
    created_at: str
    updated_at: str
    event_type: str | None = None
    reason: str | None = None


class RegistrationPage(msgspec.Struct):
    """One page of registrations; pass ``next_cursor`` as ``cursor`` for more.

    ``next_cursor`` is null once there are no more. A page may hold fewer
    items than the limit when filters skip many; keep following the cursor.
    """

    data: list[RegistrationSummary]
    next_cursor: str | None


class Tenant(msgspec.Struct):
    """The calling tenant; secrets and keys are never shown."""

    name: str
    active_registrations: int
    own_modelgates_key: bool
    previous_secret_valid_until: str | None = None


class SigningSecretRotate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/tenant/signing-secret``."""

    grace_period_s: int = 86400


class SigningSecret(msgspec.Struct):
    """A new signing secret, shown this once."""

    signing_secret: str
    previous_secret_valid_until: str | None


class ModelGatesKey(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``PUT /v1/tenant/modelgates-key``."""

    api_key: str


class AttemptList(msgspec.Struct):
    """The newest delivery attempts of one registration, newest first."""

    registration_id: str
    event_id: str
    attempts: list[Attempt]


def attempt_view(row: dict[str, Any]) -> Attempt:
    """Map one stored attempt to its API shape."""
    return Attempt(
        attempt=int(row.get("attempt", 0)),
        at=rfc3339_ms(int(row["at_ms"])),
        status_code=row.get("status_code"),
        duration_ms=float(row.get("duration_ms", 0.0)),
        error=row.get("error"),
        response_excerpt=row.get("response_excerpt"),
        round=int(row.get("round", 1)),
    )


def new_registration_view(
    registration_id: str, request: NewRegistration, created_at_ms: int
) -> Registration:
    """Build the view of a registration just created, without reading it back."""
    created_at = rfc3339_ms(created_at_ms)
    return Registration(
        id=registration_id,
        job_id=request.job_id,
        callback_url=request.callback_url,
        events=list(request.events),
        metadata=msgspec.json.decode(request.metadata_json),
        state="tracking",
        created_at=created_at,
        updated_at=created_at,
        upstream=Upstream(polls=0),
    )


def summary_view(row: dict[str, str]) -> RegistrationSummary:
    """Map a stored registration to its listed shape."""
    return RegistrationSummary(
        **_stored_fields(row), event_type=row.get("event_type") or None
    )


def _stored_fields(row: dict[str, str]) -> dict[str, Any]:
    """Return the fields that the full and the listed shape share."""
    return {
        "id": row["id"],
        "job_id": row["job_id"],
        "callback_url": row["callback_url"],
        "events": decode_events(row["events"]),
        "metadata": json.loads(row["metadata"]),
        "state": row["state"],
        "created_at": rfc3339_ms(int(row["created_at_ms"])),
        "updated_at": rfc3339_ms(int(row.get("updated_at_ms") or row["created_at_ms"])),
        "reason": row.get("reason") or None,
    }


async def owned_registration(
    store: Store, registration_id: str, tenant: str
) -> dict[str, str] | None:
    """Return a registration if ``tenant`` owns it; None otherwise.

    Another tenant's registration looks exactly like a missing one.
    """
    row = await store.registration(registration_id)
    if row is None or row.get("tenant", "default") != tenant:
        return None
    return row


async def registration_view(
    store: Store, registration_id: str, tenant: str
) -> Registration | None:
    """Read a registration with its tracker or outcome; None if not the tenant's."""
    row = await owned_registration(store, registration_id, tenant)
    if row is None:
        return None
    if row["state"] == "tracking":
        upstream = _upstream_view(await store.tracker(row["tracker_id"]))
    else:
        finished_at = row.get("finished_at_ms")
        upstream = Upstream(
            polls=int(row.get("polls", 0)),
            snapshot=json.loads(row.get("snapshot", "null")),
            last_polled_at=rfc3339_ms(int(finished_at)) if finished_at else None,
        )
    return Registration(
        **_stored_fields(row),
        upstream=upstream,
        delivery=await _delivery_view(store, row),
        status_deliveries=await _status_deliveries(store, row),
    )


def _upstream_view(tracker: dict[str, str] | None) -> Upstream:
    if tracker is None:
        return Upstream(polls=0)
    polled_at = tracker.get("last_polled_at_ms")
    return Upstream(
        polls=int(tracker["polls"]),
        snapshot=json.loads(tracker["snapshot"]) if tracker.get("snapshot") else None,
        last_status_code=int(tracker["last_status_code"])
        if tracker.get("last_status_code")
        else None,
        last_error=tracker.get("last_error") or None,
        last_polled_at=rfc3339_ms(int(polled_at)) if polled_at else None,
    )


async def _delivery_view(store: Store, row: dict[str, str]) -> Delivery | None:
    if row["state"] in ("tracking", "filtered"):
        return None
    return await _event_delivery(store, row["event_id"])


async def _status_deliveries(store: Store, row: dict[str, str]) -> list[Delivery]:
    if STATUS_CHANGED not in decode_events(row["events"]):
        return []
    found = await _event_delivery(store, status_event_id_for(row["id"], "in_progress"))
    return [found] if found is not None else []


async def _event_delivery(store: Store, event_id: str) -> Delivery | None:
    event = await store.event(event_id)
    if not event:
        return None
    attempts = await store.attempts(event_id, 1)
    return Delivery(
        event_id=event_id,
        event_type=event[b"type"].decode(),
        state=event[b"state"].decode(),
        attempts=int(event[b"attempts"]),
        last_attempt=attempt_view(attempts[0]) if attempts else None,
    )
