"""The dispatcher: claims due work from the schedules and enqueues RQ jobs.

Claiming pushes each member's score to ``now + lease`` in the same Lua call
that reads it, so a worker that dies mid-batch only delays its work by the
lease. The members then become due again and another worker claims them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
import structlog
from rq import Queue
from rq.job import Job

from relay import lua
from relay.keys import Keys
from relay.settings import Settings
from workers import maintenance
from workers.deliver import deliver_batch
from workers.leases import Claim
from workers.poll import poll_batch

log = structlog.get_logger(__name__)

# Sleep at most this long when nothing is due, so new work is seen quickly.
MAX_IDLE_S = 0.25
# Claim no more while this many batches wait in a queue; their leases would
# otherwise run out before a worker reaches them.
MAX_QUEUED_BATCHES = 4
# While the queue is full, look again this soon: a busy worker empties four
# batches in well under the idle sleep.
FULL_QUEUE_WAIT_S = 0.05


class Dispatcher(threading.Thread):
    """Feeds the poll and deliver queues from the schedules, in a thread."""

    def __init__(self, settings: Settings, connection: redis.Redis) -> None:
        super().__init__(name="relay-dispatcher", daemon=True)
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._claim = connection.register_script(lua.CLAIM)
        self._poll_queue = Queue(self.keys.poll_queue, connection=connection)
        self._deliver_queue = Queue(self.keys.deliver_queue, connection=connection)
        self._stopping = threading.Event()
        self._connection = connection
        self._next_sweep = 0.0
        # Monotonic time of the last finished round, for the liveness check.
        self.last_round_at = time.monotonic()
        # Jobs this thread enqueued within the last lease, oldest first.
        self._enqueued: dict[str, tuple[float, Queue, Job, Claim]] = {}

    def stop(self) -> None:
        """Ask the thread to finish its current round and exit."""
        self._stopping.set()

    def run(self) -> None:
        log.info("dispatcher.started")
        while not self._stopping.is_set():
            try:
                wait_s = self.dispatch_once()
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + maintenance.SWEEP_EVERY_S
                    maintenance.sweep(self._connection, self.keys)
            except redis.RedisError as exc:
                log.warning("dispatcher.redis_failed", error=repr(exc))
                wait_s = 1.0
            self.last_round_at = time.monotonic()
            self._stopping.wait(wait_s)
        log.info("dispatcher.stopped")

    def take_back_queued(self) -> list[Claim]:
        """Remove this thread's jobs that no worker started and return their claims.

        Call it after the thread has stopped. A job that another worker has
        already dequeued stays with that worker.
        """
        waiting = {
            queue.name: set(queue.get_job_ids())
            for queue in (self._poll_queue, self._deliver_queue)
        }
        claims = []
        for _, queue, job, claim in self._enqueued.values():
            if job.id in waiting[queue.name] and queue.remove(job.id):
                job.delete(remove_from_queue=False)
                claims.append(claim)
        self._enqueued.clear()
        return claims

    def dispatch_once(self) -> float:
        """Claim and enqueue one round of due work; return how long to sleep."""
        poll_wait_s = self._feed(self.keys.poll_schedule, self._poll_queue, poll_batch)
        deliver_wait_s = self._feed(
            self.keys.deliver_schedule, self._deliver_queue, deliver_batch
        )
        return min(poll_wait_s, deliver_wait_s)

    def _feed(
        self, schedule: str, queue: Queue, job: Callable[[list[str]], object]
    ) -> float:
        if queue.count >= MAX_QUEUED_BATCHES:
            return FULL_QUEUE_WAIT_S
        settings = self.settings
        reply = self._claim(
            keys=[schedule], args=[settings.batch_size, settings.lease_s]
        )
        wait_s = float(reply[0])
        members = [member.decode() for member in reply[2:]]
        if not members:
            return MAX_IDLE_S if wait_s < 0 else min(wait_s, MAX_IDLE_S)

        claim = Claim(schedule, reply[1].decode(), tuple(members))
        enqueued = queue.enqueue(
            job,
            members,
            job_timeout=int(settings.lease_s),
            result_ttl=0,
            failure_ttl=24 * 3600,
            meta=claim.job_meta(),
        )
        self._remember(queue, enqueued, claim)
        log.debug("dispatcher.enqueued", queue=queue.name, size=len(members))
        # A full batch means more may be due right now.
        return 0.0 if len(members) == settings.batch_size else min(wait_s, MAX_IDLE_S)

    def _remember(self, queue: Queue, job: Job, claim: Claim) -> None:
        now = time.monotonic()
        self._enqueued[job.id] = (now, queue, job, claim)
        # Dicts keep insertion order, so the oldest entry comes first.
        while self._enqueued:
            oldest_id, (enqueued_at, *_) = next(iter(self._enqueued.items()))
            if now - enqueued_at <= self.settings.lease_s:
                break
            del self._enqueued[oldest_id]
