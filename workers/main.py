"""``relay worker``: an RQ worker for the relay's queues plus its dispatcher.

On SIGTERM or SIGINT the worker stops claiming work and starting batches. The
polls and webhook attempts already running get up to ``RELAY_SHUTDOWN_GRACE_S``
to finish, and the rest are cancelled. The worker then releases every claim it
did not finish, so other workers take that work at once. A second signal
stops it at once (RQ's cold shutdown), and its claims then expire after
``RELAY_LEASE_S``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from types import FrameType

import redis
import structlog
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job

import migrations
from relay.keys import Keys
from relay.settings import Settings
from workers import leases
from workers.dispatcher import Dispatcher
from workers.heartbeat import Heartbeat, remove_file
from workers.runtime import Runtime, close_runtime, install_runtime

log = structlog.get_logger(__name__)

PUBSUB_STOP_WAIT_S = 1.0


class RelayWorker(SimpleWorker):
    """An RQ SimpleWorker that remembers the claim of every batch it runs.

    SimpleWorker runs jobs in this process: a batch is cheap, a fork per
    batch is not, and the shared clients live in this process.
    """

    def __init__(
        self,
        queues: list[Queue],
        connection: redis.Redis,
        lease_s: float,
        on_stop: Callable[[], None],
    ) -> None:
        super().__init__(queues, connection=connection)
        self.claims = leases.RecentClaims(lease_s)
        self._on_stop = on_stop

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Stop claiming and starting work, then let RQ stop after this job."""
        # Runs in the signal handler, before RQ raises StopRequested when idle.
        self._on_stop()
        # RQ 3.0 leaves request_stop unannotated.
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def unsubscribe(self) -> None:
        """Close RQ's pub/sub channel, waiting at most a second for its thread.

        RQ 3.0 waits for the thread with no time limit, and with redis-py 8.2
        the thread can first wait 60 s for a subscription it has just ended
        when the worker stops right after it started. The thread is a daemon,
        so the process may exit while it still waits.
        """
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop(timeout=PUBSUB_STOP_WAIT_S)
            self.pubsub.close()

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        claim = leases.Claim.of_job(job)
        if claim is not None:
            self.claims.add(claim)
        result: bool = super().perform_job(job, queue, execution)
        return result


class Shutdown:
    """The moment the worker began to stop, and the grace deadline after it."""

    def __init__(self, grace_s: float, *stoppers: Callable[[], None]) -> None:
        self.grace_s = grace_s
        self.deadline: float | None = None
        self._stoppers = stoppers

    def begin(self) -> None:
        """Start the grace period once and tell every part to stop taking work."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.grace_s
        for stop in self._stoppers:
            stop()

    def left_s(self) -> float:
        """Return the seconds left of the grace period, at least 0."""
        if self.deadline is None:
            return self.grace_s
        return max(0.0, self.deadline - time.monotonic())


def run_worker(settings: Settings, burst: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then shut down as the module describes."""
    settings.require_worker()
    # A file left by an earlier run in this pod must not pass the probes.
    remove_file(settings.worker_heartbeat_file)
    connection = redis.Redis.from_url(
        settings.redis_url, socket_timeout=30, socket_connect_timeout=5
    )
    keys = Keys(settings.key_prefix)
    migrations.check(connection, keys)

    runtime = Runtime(settings)
    install_runtime(runtime)
    dispatcher = Dispatcher(settings, connection)
    shutdown = Shutdown(
        settings.shutdown_grace_s, dispatcher.stop, runtime.stop_taking_batches
    )
    queues = [
        Queue(keys.deliver_queue, connection=connection),
        Queue(keys.poll_queue, connection=connection),
    ]
    worker = RelayWorker(queues, connection, settings.lease_s, shutdown.begin)
    heartbeat = Heartbeat(settings, worker.name, dispatcher, runtime)
    # RQ installs this handler only when its loop starts. Without it, a signal
    # before then would end the process, and its claims would wait for the
    # lease to expire.
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    try:
        dispatcher.start()
        heartbeat.start()
        log.info("worker.started", name=worker.name, queues=[q.name for q in queues])
        # RQ logs several INFO lines per job; the relay logs one per batch.
        rq_level = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
        worker.work(burst=burst, logging_level=rq_level)
    except StopRequested:
        # The signal came before RQ's loop, which would have caught this.
        pass
    finally:
        shutdown.begin()
        log.info(
            "worker.stopping", name=worker.name, grace_s=round(shutdown.left_s(), 1)
        )
        _stop(connection, worker, dispatcher, heartbeat, shutdown)
        log.info("worker.stopped", name=worker.name)


def _stop(
    connection: redis.Redis,
    worker: RelayWorker,
    dispatcher: Dispatcher,
    heartbeat: Heartbeat,
    shutdown: Shutdown,
) -> None:
    """Finish or cancel running work within the grace, then release claims."""
    heartbeat.stop()
    if dispatcher.is_alive():
        dispatcher.join(timeout=shutdown.left_s() + 1)
    claims = list(worker.claims.all())
    try:
        claims += dispatcher.take_back_queued()
    except redis.RedisError as exc:
        log.warning("worker.take_back_failed", error=repr(exc))

    # Cancels what is still running at the deadline, so nothing this process
    # runs writes to Redis after the release below.
    close_runtime(shutdown.deadline)
    try:
        released = leases.release(connection, claims)
    except redis.RedisError as exc:
        # The claims expire after the lease instead.
        log.warning("worker.release_failed", error=repr(exc))
    else:
        log.info("worker.claims_released", batches=len(claims), members=released)
    heartbeat.remove_file()
