"""The relay's state in Redis: registrations, trackers, events and schedules.

Every multi-key change goes through one Lua script from ``relay.lua``, so a
crash between two writes cannot leave half a registration or an event without
its schedule entry. Redis errors become ``StoreUnavailableError`` here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay import keys as keyspace
from relay import lua
from relay.errors import SchemaError, StoreUnavailableError
from relay.registrations import (
    NewRegistration,
    encode_events,
    event_id_for,
    status_event_id_for,
    wants_status_changes,
)
from relay.stats import WINDOW_TTL_S, StatsBatch


@dataclass(frozen=True)
class TrackerUpdate:
    """A non-final poll's result: new tracker fields and the next due time."""

    tracker_id: str
    delay_s: float
    fields: dict[str, Any]


@dataclass(frozen=True)
class Limits:
    """The limits of one registration request: its key's rate and its tenant's cap.

    Zero turns a limit off.
    """

    rate_per_s: float = 0.0
    burst: int = 1
    max_active: int = 0


@dataclass(frozen=True)
class Registered:
    """The outcome of ``Store.register``.

    ``status`` is ``created``, ``reused``, ``rate_limited`` or ``at_cap``. For
    ``rate_limited``, ``retry_after_s`` is when a token is free; for
    ``at_cap``, ``active`` is the tenant's count of active registrations.
    """

    status: str
    registration_id: str
    now_ms: int
    retry_after_s: float = 0.0
    active: int = 0


# Tracker hash fields that name the registrations it serves: ``r:{ID}``.
REGISTRATION_FIELD = "r:"


def index_member(created_at_ms: int, registration_id: str) -> str:
    """Return a registration's member in its tenant's index (see ``relay.keys``)."""
    return f"{created_at_ms:013d}:{registration_id}"


@dataclass(frozen=True)
class PageQuery:
    """One request for a page of a tenant's registrations.

    Times are epoch milliseconds; ``after_ms`` and ``before_ms`` are
    exclusive. ``cursor`` is the index member a previous page ended on.
    """

    limit: int = 50
    newest_first: bool = True
    after_ms: int | None = None
    before_ms: int | None = None
    cursor: str | None = None
    job_id: str | None = None
    state: str | None = None
    scan_budget: int = 1000

    def bounds(self) -> tuple[str, str]:
        """Return the (min, max) lexicographic range for ZRANGEBYLEX."""
        low = "-" if self.after_ms is None else f"[{self.after_ms + 1:013d}"
        high = "+" if self.before_ms is None else f"({self.before_ms:013d}"
        if self.cursor is not None:
            if self.newest_first:
                high = min(high, "(" + self.cursor, key=_bound_key)
            else:
                low = max(low, "(" + self.cursor, key=_bound_key)
        return low, high

    def matches(self, row: dict[str, str]) -> bool:
        if self.job_id is not None and row.get("job_id") != self.job_id:
            return False
        return self.state is None or row.get("state") == self.state


def _bound_key(bound: str) -> tuple[int, str]:
    """Order ZRANGEBYLEX bounds: '-' lowest, '+' highest, else by value."""
    if bound == "-":
        return (0, "")
    if bound == "+":
        return (2, "")
    return (1, bound[1:])


@dataclass(frozen=True)
class NewEvent:
    """One event for one registration, with its body serialized once."""

    registration_id: str
    event_id: str
    body: bytes
    tenant: str = "default"


@asynccontextmanager
async def translate_errors() -> AsyncIterator[None]:
    """Turn redis-py's connection failures into StoreUnavailableError."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailableError(
            f"Redis is unreachable: {type(exc).__name__}"
        ) from exc


def decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    """Decode a hash read with HGETALL into text."""
    return {key.decode(): value.decode() for key, value in raw.items()}


class Store:
    """Async access to the keyspace, shared by the API and the workers."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, retention_s: float = 7 * 86400
    ) -> None:
        self.client = client
        self.retention_s = int(retention_s)
        self.keys = keyspace.Keys(prefix)
        self._register = client.register_script(lua.REGISTER)
        self._tracker_update = client.register_script(lua.TRACKER_UPDATE)
        self._tracker_finish = client.register_script(lua.TRACKER_FINISH)
        self._event_record = client.register_script(lua.EVENT_RECORD)
        self._tracker_progress = client.register_script(lua.TRACKER_PROGRESS)
        self._delete = client.register_script(lua.DELETE)
        self._defer = client.register_script(lua.DEFER)
        self._redeliver = client.register_script(lua.REDELIVER)

    async def register(
        self,
        registration_id: str,
        request: NewRegistration,
        tenant: str,
        cred: str,
        first_delay_s: float,
        deadline_s: float,
        limits: Limits,
        key_id: str = "",
    ) -> Registered:
        """Store a registration unless it exists or a limit refuses it.

        For a duplicate, the ID is the existing registration's.
        """
        keys = self.keys
        tracker_id = keys.tracker_id(cred, request.job_id)
        digest = keyspace.dedupe_digest(tenant, request.job_id, request.callback_url)
        fields = {
            "tenant": tenant,
            "job_id": request.job_id,
            "callback_url": request.callback_url,
            "events": encode_events(request.events),
            "metadata": request.metadata_json,
            "state": "tracking",
            "tracker_id": tracker_id,
            "dedupe_key": keys.dedupe(digest),
        }
        args: list[Any] = [
            registration_id,
            tracker_id,
            first_delay_s,
            deadline_s,
            keyspace.SCHEMA_VERSION,
            limits.rate_per_s if key_id else 0,
            limits.burst,
            limits.max_active,
            "1" if wants_status_changes(request.events) else "0",
        ]
        for name, value in fields.items():
            args += [name, value]
        async with translate_errors():
            code, found, now_ms = await self._register(
                keys=[
                    keys.dedupe(digest),
                    keys.registration(registration_id),
                    keys.tracker(tracker_id),
                    keys.poll_schedule,
                    keys.schema,
                    keys.stats("registrations"),
                    keys.tenant(tenant),
                    keys.tenant_registrations(tenant),
                    keys.key_rate_limit(key_id),
                    keys.stats("tracked"),
                ],
                args=args,
            )
        now_ms = int(now_ms)
        if code == -1:
            raise SchemaError(
                "Redis keyspace has no current schema version; run `relay migrate`"
            )
        if code == -2:
            return Registered("rate_limited", "", now_ms, retry_after_s=float(found))
        if code == -3:
            return Registered("at_cap", "", now_ms, active=int(found))
        status = "created" if code == 1 else "reused"
        return Registered(status, cast(bytes, found).decode(), now_ms)

    async def registration(self, registration_id: str) -> dict[str, str] | None:
        """Return a registration's fields, or None if it does not exist."""
        async with translate_errors():
            raw = await self.client.hgetall(self.keys.registration(registration_id))
        return _with_ids(registration_id, decode(raw))

    async def list_registrations(
        self, tenant: str, page: PageQuery
    ) -> tuple[list[dict[str, str]], str | None]:
        """Return one page of a tenant's registrations and the cursor after it.

        Index members whose registration expired are removed on the way.
        The page has fewer than ``page.limit`` rows when the filters skip
        many; the cursor is None only when the range is exhausted.
        """
        index = self.keys.tenant_registrations(tenant)
        low, high = page.bounds()
        found: list[dict[str, str]] = []
        scanned = 0
        last: str | None = None
        while len(found) < page.limit and scanned < page.scan_budget:
            chunk = min(page.scan_budget - scanned, max(page.limit - len(found), 50))
            async with translate_errors():
                if page.newest_first:
                    raw = await self.client.zrevrangebylex(index, high, low, 0, chunk)
                else:
                    raw = await self.client.zrangebylex(index, low, high, 0, chunk)
            members = [cast(bytes, member).decode() for member in raw]
            if not members:
                return found, None
            rows = await self._registrations([m.split(":", 1)[1] for m in members])
            stale = []
            for member, row in zip(members, rows, strict=True):
                scanned += 1
                last = member
                if row is None:
                    stale.append(member)
                elif page.matches(row):
                    found.append(row)
                    if len(found) == page.limit:
                        break
            if stale:
                async with translate_errors():
                    await self.client.zrem(index, *stale)
            if len(members) < chunk and len(found) < page.limit:
                return found, None
            if last is not None:
                if page.newest_first:
                    high = "(" + last
                else:
                    low = "(" + last
        return found, last

    async def _registrations(self, ids: list[str]) -> list[dict[str, str] | None]:
        async with translate_errors(), self.client.pipeline(transaction=False) as pipe:
            for registration_id in ids:
                pipe.hgetall(self.keys.registration(registration_id))
            rows = await pipe.execute()
        return [_with_ids(i, decode(row)) for i, row in zip(ids, rows, strict=True)]

    async def tracker(self, tracker_id: str) -> dict[str, str] | None:
        """Return a tracker's fields, or None once it has ended."""
        async with translate_errors():
            raw = await self.client.hgetall(self.keys.tracker(tracker_id))
        return decode(raw) or None

    async def trackers(
        self, tracker_ids: list[str]
    ) -> tuple[list[dict[str, str] | None], int]:
        """Return several trackers and Redis's clock (epoch ms) in one round trip.

        Workers judge deadlines by Redis's clock, so skew between worker
        hosts changes nothing.
        """
        async with translate_errors(), self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            for tracker_id in tracker_ids:
                pipe.hgetall(self.keys.tracker(tracker_id))
            clock, *rows = await pipe.execute()
        now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
        return [decode(row) or None for row in rows], now_ms

    async def now_ms(self) -> int:
        """Return Redis's clock in epoch milliseconds."""
        async with translate_errors():
            seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def event(self, event_id: str) -> dict[bytes, bytes]:
        """Return an event's raw fields; the body stays bytes."""
        async with translate_errors():
            raw = await self.client.hgetall(self.keys.event(event_id))
        return cast(dict[bytes, bytes], raw)

    async def events(self, event_ids: list[str]) -> list[dict[bytes, bytes]]:
        """Return several events' raw fields in one round trip."""
        async with translate_errors(), self.client.pipeline(transaction=False) as pipe:
            for event_id in event_ids:
                pipe.hgetall(self.keys.event(event_id))
            rows = await pipe.execute()
        return cast(list[dict[bytes, bytes]], rows)

    async def attempts(self, event_id: str, limit: int) -> list[dict[str, Any]]:
        """Return the newest delivery attempts of an event."""
        async with translate_errors():
            rows = await self.client.lrange(self.keys.attempts(event_id), 0, limit - 1)
        return [json.loads(row) for row in rows]

    async def delete(self, registration: dict[str, str]) -> bool:
        """Remove a registration, its event and, if unshared, its tracker."""
        keys = self.keys
        registration_id = registration["id"]
        tracker_id = registration["tracker_id"]
        event_id = event_id_for(registration_id)
        status_event_id = status_event_id_for(registration_id, "in_progress")
        digest = keyspace.dedupe_digest(
            registration["tenant"], registration["job_id"], registration["callback_url"]
        )
        async with translate_errors():
            removed = await self._delete(
                keys=[
                    keys.dedupe(digest),
                    keys.registration(registration_id),
                    keys.tracker(tracker_id),
                    keys.poll_schedule,
                    keys.event(event_id),
                    keys.deliver_schedule,
                    keys.attempts(event_id),
                    keys.exhausted,
                    keys.tenant(registration["tenant"]),
                    keys.tenant_registrations(registration["tenant"]),
                    keys.event(status_event_id),
                    keys.attempts(status_event_id),
                    keys.stats("tracked"),
                ],
                args=[
                    registration_id,
                    tracker_id,
                    event_id,
                    index_member(int(registration["created_at_ms"]), registration_id),
                    status_event_id,
                ],
            )
        return bool(removed)

    async def update_trackers(self, updates: list[TrackerUpdate]) -> None:
        """Record non-final polls and schedule the next ones, in one pipeline.

        A tracker deleted meanwhile stays deleted: the script only removes it
        from the schedule.
        """
        if not updates:
            return
        keys = self.keys
        async with translate_errors(), self.client.pipeline(transaction=False) as pipe:
            for update in updates:
                args: list[Any] = [update.tracker_id, update.delay_s]
                for name, value in update.fields.items():
                    args += [name, value]
                await self._tracker_update(
                    keys=[
                        keys.tracker(update.tracker_id),
                        keys.poll_schedule,
                        keys.stats("tracked"),
                    ],
                    args=args,
                    client=pipe,
                )
            await pipe.execute()

    async def defer_polls(self, tracker_ids: list[str], delay_s: float) -> None:
        """Put claimed trackers back on the schedule, due after ``delay_s``."""
        async with translate_errors():
            await self._defer(
                keys=[self.keys.poll_schedule], args=[delay_s, *tracker_ids]
            )

    async def defer_deliveries(self, event_ids: list[str], delay_s: float) -> None:
        """Put claimed events back on the schedule, due after ``delay_s``."""
        async with translate_errors():
            await self._defer(
                keys=[self.keys.deliver_schedule], args=[delay_s, *event_ids]
            )

    async def tracker_registrations(self, tracker_id: str) -> list[dict[str, str]]:
        """Return the registrations a tracker serves that still await an outcome."""
        keys = self.keys
        async with translate_errors():
            fields = await self.client.hkeys(keys.tracker(tracker_id))
            ids = sorted(
                name[2:]
                for name in (cast(bytes, field).decode() for field in fields)
                if name.startswith(REGISTRATION_FIELD)
            )
            async with self.client.pipeline(transaction=False) as pipe:
                for registration_id in ids:
                    pipe.hgetall(keys.registration(registration_id))
                rows = await pipe.execute()
        found = [
            _with_ids(id_, decode(row)) for id_, row in zip(ids, rows, strict=True)
        ]
        return [row for row in found if row is not None]

    async def finish_tracker(
        self,
        tracker_id: str,
        event_type: str,
        snapshot_json: str,
        polls: int,
        reason: str,
        events: list[NewEvent],
        filtered: list[tuple[str, str]],
    ) -> int:
        """End a tracker and create its events in one step; -1 if its set changed.

        ``filtered`` lists (registration ID, tenant) of registrations whose
        event filter excludes ``event_type``.
        """
        keys = self.keys
        script_keys = [
            keys.tracker(tracker_id),
            keys.poll_schedule,
            keys.deliver_schedule,
            keys.stats("tracked"),
        ]
        args: list[Any] = [
            tracker_id,
            event_type,
            snapshot_json,
            polls,
            reason,
            self.retention_s,
        ]
        entries = [(e.registration_id, e.event_id, e.body, e.tenant) for e in events]
        entries += [(reg_id, "", b"", tenant) for reg_id, tenant in filtered]
        args.append(len(entries))
        for registration_id, event_id, body, tenant in entries:
            script_keys += [
                keys.registration(registration_id),
                keys.event(event_id or event_id_for(registration_id)),
                keys.tenant(tenant),
            ]
            args += [registration_id, event_id, body]
        async with translate_errors():
            return int(await self._tracker_finish(keys=script_keys, args=args))

    async def notify_status(
        self, tracker_id: str, status: str, events: list[NewEvent]
    ) -> int:
        """Create status events once per tracker and status; return how many."""
        keys = self.keys
        script_keys = [keys.tracker(tracker_id), keys.deliver_schedule]
        args: list[Any] = [status, len(events)]
        for event in events:
            script_keys += [
                keys.registration(event.registration_id),
                keys.event(event.event_id),
            ]
            args += [event.registration_id, event.event_id, event.body]
        async with translate_errors():
            return int(await self._tracker_progress(keys=script_keys, args=args))

    async def record_attempt(
        self,
        event_id: str,
        registration_id: str,
        attempt: dict[str, Any],
        outcome: str,
        delay_s: float = 0.0,
        tenant: str = "default",
    ) -> tuple[bool, int]:
        """Store one delivery attempt and move the event on by ``outcome``.

        Returns whether the event changed and, for a final outcome, the
        milliseconds since the event was created, by Redis's clock.
        """
        async with translate_errors():
            changed, since_ms = await self._event_record(
                keys=self._event_keys(event_id, registration_id, tenant),
                args=[
                    event_id,
                    json.dumps(attempt, separators=(",", ":")),
                    outcome,
                    delay_s,
                    keyspace.ATTEMPTS_KEPT,
                    self.retention_s,
                ],
            )
        return bool(changed), int(since_ms)

    def _event_keys(
        self, event_id: str, registration_id: str, tenant: str
    ) -> list[str]:
        """Return the keys the event scripts take, in their order."""
        keys = self.keys
        return [
            keys.event(event_id),
            keys.registration(registration_id),
            keys.deliver_schedule,
            keys.attempts(event_id),
            keys.exhausted,
            keys.tenant(tenant),
        ]

    async def redeliver(self, registration_id: str, tenant: str) -> int:
        """Queue a registration's event again; see ``lua.REDELIVER`` for results."""
        event_id = event_id_for(registration_id)
        async with translate_errors():
            result = await self._redeliver(
                keys=self._event_keys(event_id, registration_id, tenant),
                args=[event_id],
            )
        return int(result)

    async def count(self, name: str, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the fleet-wide counters of ``name``."""
        if not counts:
            return
        async with translate_errors(), self.client.pipeline(transaction=False) as pipe:
            for field, amount in counts.items():
                pipe.hincrby(self.keys.stats(name), field, amount)
            await pipe.execute()

    async def record(self, batch: StatsBatch) -> None:
        """Write a batch of counts, sums and observations in one pipeline."""
        if not batch:
            return
        keys = self.keys
        async with translate_errors(), self.client.pipeline(transaction=False) as pipe:
            for (name, label), amount in batch.counts.items():
                pipe.hincrby(keys.stats(name), label, amount)
            for (name, label), total in batch.sums.items():
                pipe.hincrbyfloat(keys.stats(name), label, total)
            for name, buckets, total, count in batch.histogram_fields():
                key = keys.stats(f"hist:{name}")
                for bucket, amount in buckets.items():
                    pipe.hincrby(key, bucket, amount)
                pipe.hincrbyfloat(key, "sum", total)
                pipe.hincrby(key, "count", count)
            if batch.window:
                key = keys.stats(f"minute:{batch.minute()}")
                for label, amount in batch.window.items():
                    pipe.hincrby(key, label, amount)
                pipe.expire(key, WINDOW_TTL_S)
            await pipe.execute()

    async def counters(self, name: str) -> dict[str, int]:
        """Return the fleet-wide counters of ``name``."""
        async with translate_errors():
            raw = await self.client.hgetall(self.keys.stats(name))
        return {field: int(value) for field, value in decode(raw).items()}

    async def schema_version(self) -> int | None:
        """Return the keyspace version ``relay migrate`` applied, if any."""
        async with translate_errors():
            raw = await self.client.get(self.keys.schema)
        return int(raw) if raw is not None else None


def _with_ids(registration_id: str, row: dict[str, str]) -> dict[str, str] | None:
    """Add the IDs a registration hash leaves out because its key implies them."""
    if not row:
        return None
    row["id"] = registration_id
    row.setdefault("event_id", event_id_for(registration_id))
    return row
