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
from relay.registrations import NewRegistration, encode_events, event_id_for

TENANT = "default"


@dataclass(frozen=True)
class TrackerUpdate:
    """A non-final poll's result: new tracker fields and the next due time."""

    tracker_id: str
    delay_s: float
    fields: dict[str, Any]


@dataclass(frozen=True)
class TerminalEvent:
    """The event one registration receives when its tracker ends."""

    registration_id: str
    event_id: str
    body: bytes


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
        self._delete = client.register_script(lua.DELETE)
        self._defer = client.register_script(lua.DEFER)
        self._redeliver = client.register_script(lua.REDELIVER)

    async def register(
        self,
        registration_id: str,
        request: NewRegistration,
        cred: str,
        first_delay_s: float,
        deadline_s: float,
    ) -> tuple[bool, str, int]:
        """Store a registration; return (created, ID, Redis time in ms).

        For a duplicate, the ID is the existing registration's.
        """
        keys = self.keys
        tracker_id = keys.tracker_id(cred, request.job_id)
        digest = keyspace.dedupe_digest(TENANT, request.job_id, request.callback_url)
        fields = {
            "tenant": TENANT,
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
        ]
        for name, value in fields.items():
            args += [name, value]
        async with translate_errors():
            created, found_id, now_ms = await self._register(
                keys=[
                    keys.dedupe(digest),
                    keys.registration(registration_id),
                    keys.tracker(tracker_id),
                    keys.tracker_registrations(tracker_id),
                    keys.poll_schedule,
                    keys.schema,
                    keys.stats("registrations"),
                ],
                args=args,
            )
        if created == -1:
            raise SchemaError(
                "Redis keyspace has no current schema version; run `relay migrate`"
            )
        return bool(created), cast(bytes, found_id).decode(), int(now_ms)

    async def registration(self, registration_id: str) -> dict[str, str] | None:
        """Return a registration's fields, or None if it does not exist."""
        async with translate_errors():
            raw = await self.client.hgetall(self.keys.registration(registration_id))
        return _with_ids(registration_id, decode(raw))

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
        digest = keyspace.dedupe_digest(
            registration["tenant"], registration["job_id"], registration["callback_url"]
        )
        async with translate_errors():
            removed = await self._delete(
                keys=[
                    keys.dedupe(digest),
                    keys.registration(registration_id),
                    keys.tracker(tracker_id),
                    keys.tracker_registrations(tracker_id),
                    keys.poll_schedule,
                    keys.event(event_id),
                    keys.deliver_schedule,
                    keys.attempts(event_id),
                    keys.exhausted,
                ],
                args=[registration_id, tracker_id, event_id],
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
                    keys=[keys.tracker(update.tracker_id), keys.poll_schedule],
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
            members = await self.client.smembers(keys.tracker_registrations(tracker_id))
            ids = sorted(cast(bytes, member).decode() for member in members)
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
        events: list[TerminalEvent],
        filtered_ids: list[str],
    ) -> int:
        """End a tracker and create its events in one step; -1 if its set changed."""
        keys = self.keys
        script_keys = [
            keys.tracker(tracker_id),
            keys.tracker_registrations(tracker_id),
            keys.poll_schedule,
            keys.deliver_schedule,
        ]
        args: list[Any] = [
            tracker_id,
            event_type,
            snapshot_json,
            polls,
            reason,
            self.retention_s,
        ]
        entries = [(e.registration_id, e.event_id, e.body) for e in events]
        entries += [(registration_id, "", b"") for registration_id in filtered_ids]
        args.append(len(entries))
        for registration_id, event_id, body in entries:
            script_keys += [
                keys.registration(registration_id),
                keys.event(event_id or event_id_for(registration_id)),
            ]
            args += [registration_id, event_id, body]
        async with translate_errors():
            return int(await self._tracker_finish(keys=script_keys, args=args))

    async def record_attempt(
        self,
        event_id: str,
        registration_id: str,
        attempt: dict[str, Any],
        outcome: str,
        delay_s: float = 0.0,
    ) -> bool:
        """Store one delivery attempt and move the event on by ``outcome``."""
        async with translate_errors():
            changed = await self._event_record(
                keys=self._event_keys(event_id, registration_id),
                args=[
                    event_id,
                    json.dumps(attempt, separators=(",", ":")),
                    outcome,
                    delay_s,
                    keyspace.ATTEMPTS_KEPT,
                    self.retention_s,
                ],
            )
        return bool(changed)

    def _event_keys(self, event_id: str, registration_id: str) -> list[str]:
        """Return the keys the event scripts take, in their order."""
        keys = self.keys
        return [
            keys.event(event_id),
            keys.registration(registration_id),
            keys.deliver_schedule,
            keys.attempts(event_id),
            keys.exhausted,
        ]

    async def redeliver(self, registration_id: str) -> int:
        """Queue a registration's event again; see ``lua.REDELIVER`` for results."""
        event_id = event_id_for(registration_id)
        async with translate_errors():
            result = await self._redeliver(
                keys=self._event_keys(event_id, registration_id),
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
