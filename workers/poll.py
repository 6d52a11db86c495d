"""The polling job: one RQ job polls a batch of trackers concurrently."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from typing import Any

import structlog

from relay import events
from relay.crypto import SealError
from relay.registrations import (
    STATUS_CHANGED,
    decode_events,
    event_id_for,
    status_event_id_for,
)
from relay.settings import Secret, Settings
from relay.stats import StatsBatch, status_class
from relay.store import NewEvent, Store, TrackerUpdate
from relay.upstream import Outcome
from workers.runtime import Poller, get_runtime

log = structlog.get_logger(__name__)

# Growth starts from at least this interval, so a zero first delay still backs off.
MIN_INTERVAL_S = 0.1
FINISH_RETRIES = 5
# Outcomes of a batch that sent no request; the others are counted by response.
NOT_SENT = frozenset({"deferred", "deadline", "gone", "crashed", "no_key"})
# A batch waits at most this long for tokens; later polls go back on the schedule.
BUDGET_WAIT_S = 5.0


def poll_batch(tracker_ids: list[str]) -> None:
    """RQ entry point: start polling a batch on this process's event loop."""
    runtime = get_runtime()
    runtime.hand_off(poll_trackers(runtime.poller, tracker_ids), "poll")


def next_interval_s(current_s: float, settings: Settings) -> float:
    """Return the un-jittered interval that follows ``current_s``."""
    grown = max(current_s, MIN_INTERVAL_S) * settings.poll_factor
    return min(grown, settings.poll_max_interval_s)


def jittered(delay_s: float, jitter: float) -> float:
    """Spread ``delay_s`` by ±``jitter`` (a fraction) so polls do not bunch up."""
    return delay_s * random.uniform(1 - jitter, 1 + jitter)  # noqa: S311 - not crypto


async def poll_trackers(poller: Poller, tracker_ids: list[str]) -> dict[str, int]:
    """Poll a batch concurrently; return how many polls ended in each kind."""
    started = time.perf_counter()
    trackers, now_ms = await poller.store.trackers(tracker_ids)
    by_cred: dict[str, list[tuple[str, dict[str, str] | None]]] = defaultdict(list)
    for tracker_id, tracker in zip(tracker_ids, trackers, strict=True):
        by_cred[tracker_id.split(":", 1)[0]].append((tracker_id, tracker))

    stats = StatsBatch()
    groups = await asyncio.gather(
        *(
            _poll_within_budget(poller, cred, items, now_ms, stats)
            for cred, items in by_cred.items()
        )
    )
    counts: Counter[str] = Counter()
    for group in groups:
        counts.update(group)
    for label, amount in counts.items():
        if label in NOT_SENT:
            stats.count("polls", f"{label}:none", amount)
    await poller.store.record(stats)
    log.info(
        "poll.batch_finished",
        size=len(tracker_ids),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
        **counts,
    )
    return dict(counts)


async def _poll_within_budget(
    poller: Poller,
    cred: str,
    items: list[tuple[str, dict[str, str] | None]],
    now_ms: int,
    stats: StatsBatch,
) -> Counter[str]:
    """Poll one key's trackers as its token bucket allows; defer the rest."""
    try:
        api_key = await poller.keychain.modelgates_key(cred)
    except SealError as exc:
        # The operator's encryption keys do not open this key: an outage of
        # configuration, not of the job, so the polls wait rather than fail.
        log.error("poll.key_sealed", cred=cred, error=str(exc))
        await poller.store.defer_polls([tracker_id for tracker_id, _ in items], 30)
        return Counter(deferred=len(items))
    updates: list[TrackerUpdate] = []
    deadline = time.monotonic() + min(BUDGET_WAIT_S, poller.settings.lease_s / 4)
    tasks: list[tuple[str, asyncio.Task[str]]] = []
    waiting = list(items)
    while waiting:
        granted, wait_s = await poller.limiter.acquire(cred, len(waiting))
        for tracker_id, tracker in waiting[:granted]:
            polling = _poll_one(
                poller, tracker_id, tracker, updates, now_ms, api_key, stats
            )
            task = asyncio.create_task(polling)
            tasks.append((tracker_id, task))
        waiting = waiting[granted:]
        if not waiting:
            break
        if time.monotonic() + wait_s > deadline:
            deferred = [tracker_id for tracker_id, _ in waiting]
            await poller.store.defer_polls(deferred, wait_s)
            log.debug("poll.deferred", size=len(deferred), delay_s=round(wait_s, 3))
            break
        await asyncio.sleep(wait_s)

    counts: Counter[str] = Counter(deferred=len(waiting))
    for tracker_id, task in tasks:
        try:
            counts[await task] += 1
        except Exception as exc:  # noqa: BLE001 - one bad poll must not stop the batch
            # The tracker's lease runs out and it is polled again later.
            log.error(
                "poll.crashed",
                job_id=tracker_id.split(":", 1)[1],
                tracker_id=tracker_id,
                # The type only: an exception's text can quote the key.
                error=type(exc).__name__,
            )
            counts["crashed"] += 1

    # One pipeline for the whole batch instead of a round trip per poll.
    await poller.store.update_trackers(updates)
    return +counts


async def _poll_one(
    poller: Poller,
    tracker_id: str,
    tracker: dict[str, str] | None,
    updates: list[TrackerUpdate],
    now_ms: int,
    api_key: Secret | None,
    stats: StatsBatch,
) -> str:
    """Poll one tracker; ``now_ms`` is Redis's clock when the batch began."""
    store = poller.store
    if tracker is None:
        updates.append(TrackerUpdate(tracker_id, 0, {}))
        return "gone"

    job_id = tracker_id.split(":", 1)[1]
    polls = int(tracker["polls"]) + 1
    deadline_ms = int(tracker["deadline_ms"])
    if now_ms > deadline_ms:
        # The API set the deadline at registration; this worker's own setting
        # may differ, so the reason states the tracker's.
        tracked_s = (deadline_ms - int(tracker["created_at_ms"])) / 1000
        reason = f"no final status within {tracked_s:g} s"
        await finish(
            store, tracker_id, tracker, events.TRACKING_FAILED, reason, polls - 1
        )
        return "deadline"
    if api_key is None:
        reason = "the ModelGates key this job was registered with is not stored"
        await finish(
            store, tracker_id, tracker, events.TRACKING_FAILED, reason, polls - 1
        )
        return "no_key"

    started = time.perf_counter()
    outcome = await poller.modelgates.poll(job_id, api_key)
    stats.observe("upstream_request_duration", time.perf_counter() - started)
    response_class = (
        "network" if outcome.status_code is None else status_class(outcome.status_code)
    )
    stats.count("polls", f"{outcome.kind}:{response_class}")
    stats.tick("polls")
    if outcome.kind in ("error", "transient"):
        stats.tick("poll_errors")
    log.debug(
        "poll.finished",
        job_id=job_id,
        kind=outcome.kind,
        status_code=outcome.status_code,
        reason=outcome.reason or None,
    )
    if outcome.status_code == 429:
        pause_s = outcome.retry_after_s
        if pause_s is None:
            pause_s = poller.settings.upstream_pause_s
        stats.count("upstream", "throttled")
        if await poller.limiter.pause(tracker_id.split(":", 1)[0], pause_s):
            stats.count("upstream", "pauses")
        log.warning("poll.paused", job_id=job_id, pause_s=pause_s)
    if outcome.kind == "terminal":
        event_type = events.EVENT_FOR_STATUS[outcome.snapshot["status"]]
        await finish(
            store, tracker_id, tracker, event_type, "", polls, outcome.snapshot
        )
        return "terminal"
    return await _continue(poller, tracker_id, tracker, outcome, polls, updates)


async def _continue(
    poller: Poller,
    tracker_id: str,
    tracker: dict[str, str],
    outcome: Outcome,
    polls: int,
    updates: list[TrackerUpdate],
) -> str:
    settings = poller.settings
    interval_s = next_interval_s(float(tracker["interval_s"]), settings)
    delay_s = jittered(interval_s, settings.poll_jitter)
    fields: dict[str, Any] = {"interval_s": interval_s}
    if outcome.status_code is not None:
        fields["last_status_code"] = outcome.status_code

    if outcome.kind == "running":
        status = outcome.snapshot.get("status")
        fields |= {
            "errors": 0,
            "snapshot": json.dumps(outcome.snapshot),
            "last_error": "",
            "status": status,
        }
        if (
            status == "in_progress"
            and tracker.get("wants_status")
            and not tracker.get(f"notified_{status}")
        ):
            await notify_status(
                poller.store, tracker_id, status, outcome.snapshot, polls
            )
    elif outcome.kind == "transient":
        if outcome.retry_after_s is not None:
            delay_s = max(outcome.retry_after_s, delay_s)
        fields["last_error"] = outcome.reason
    else:
        errors = int(tracker.get("errors", 0)) + 1
        if errors >= settings.poll_max_errors:
            reason = f"{outcome.reason}, {errors} times in a row"
            await finish(
                poller.store, tracker_id, tracker, events.TRACKING_FAILED, reason, polls
            )
            return "gave_up"
        fields |= {"errors": errors, "last_error": outcome.reason}
        log.warning(
            "poll.rejected",
            job_id=tracker_id.split(":", 1)[1],
            status_code=outcome.status_code,
            reason=outcome.reason,
            errors=errors,
        )

    # Most polls repeat the last response; writing only what changed keeps the
    # per-poll Redis work small.
    changed = {
        name: value for name, value in fields.items() if tracker.get(name) != str(value)
    }
    updates.append(TrackerUpdate(tracker_id, delay_s, changed))
    return outcome.kind


async def notify_status(
    store: Store,
    tracker_id: str,
    status: str,
    snapshot: dict[str, Any],
    polls: int,
) -> None:
    """Send ``video.status_changed`` to the registrations that list it.

    The script creates the events at most once per tracker and status, so a
    repeated or racing poll sends nothing twice.
    """
    detected_at_ms = await store.now_ms()
    status_events = []
    for registration in await store.tracker_registrations(tracker_id):
        if registration["state"] != "tracking":
            continue
        if STATUS_CHANGED not in decode_events(registration["events"]):
            continue
        body = events.build_body(
            STATUS_CHANGED, registration, snapshot, polls, "", detected_at_ms
        )
        event_id = status_event_id_for(registration["id"], status)
        status_events.append(
            NewEvent(registration["id"], event_id, body, registration["tenant"])
        )
    created = await store.notify_status(tracker_id, status, status_events)
    if created:
        await store.count("events", {STATUS_CHANGED: created})
    log.info(
        "tracker.status_changed",
        job_id=tracker_id.split(":", 1)[1],
        status=status,
        events=created,
    )


async def finish(
    store: Store,
    tracker_id: str,
    tracker: dict[str, str],
    event_type: str,
    reason: str,
    polls: int,
    snapshot: dict[str, Any] | None = None,
) -> None:
    """End a tracker: one event per registration that subscribed to ``event_type``."""
    if snapshot is None:
        snapshot = json.loads(tracker.get("snapshot") or "{}")
    detected_at_ms = await store.now_ms()
    snapshot_json = json.dumps(snapshot)

    for _ in range(FINISH_RETRIES):
        registrations = await store.tracker_registrations(tracker_id)
        terminal_events = []
        filtered = []
        for registration in registrations:
            if event_type not in decode_events(registration["events"]):
                filtered.append((registration["id"], registration["tenant"]))
                continue
            body = events.build_body(
                event_type, registration, snapshot, polls, reason, detected_at_ms
            )
            event_id = event_id_for(registration["id"])
            terminal_events.append(
                NewEvent(registration["id"], event_id, body, registration["tenant"])
            )

        created = await store.finish_tracker(
            tracker_id,
            event_type,
            snapshot_json,
            polls,
            reason,
            terminal_events,
            filtered,
        )
        if created == -2:
            log.info("tracker.finished_elsewhere", job_id=tracker_id.split(":", 1)[1])
            return
        if created >= 0:
            stats = StatsBatch()
            if created:
                stats.count("events", event_type, created)
            cost = (snapshot.get("usage") or {}).get("cost")
            if isinstance(cost, int | float) and cost > 0:
                # Each tenant whose registration waited on this job pays for
                # it once, however many registrations it had.
                for tenant in {r["tenant"] for r in registrations}:
                    stats.add("cost", tenant, float(cost))
            await store.record(stats)
            log.info(
                "tracker.finished",
                job_id=tracker_id.split(":", 1)[1],
                event_type=event_type,
                reason=reason or None,
                polls=polls,
                events=created,
                filtered=len(filtered),
            )
            return
    # Registrations kept arriving; the lease runs out and the next poll retries.
    log.warning("tracker.finish_contended", job_id=tracker_id.split(":", 1)[1])
