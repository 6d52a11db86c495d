"""Worker heartbeats: in Redis for ``/metrics``, in a file for a liveness probe.

Every ``WORKER_HEARTBEAT_INTERVAL_S`` a thread checks that the dispatcher
thread still finishes rounds and that the event loop still runs callbacks.
While both hold, it touches ``RELAY_WORKER_HEARTBEAT_FILE`` (when set) and
records the worker's name at the Redis clock in the ``workers`` sorted set.
The file is touched before Redis is written and whether or not Redis responds,
so a liveness probe that reads the file does not restart a worker because
Redis is briefly unreachable.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import redis
import structlog

from relay import lua
from relay.keys import WORKER_HEARTBEAT_INTERVAL_S, WORKER_HEARTBEAT_KEPT_S, Keys
from relay.settings import Settings
from workers.dispatcher import Dispatcher
from workers.runtime import Runtime

log = structlog.get_logger(__name__)

# A dispatcher round blocks at most for the Redis socket timeout (30 s) plus
# the connect timeout (5 s) that workers.main sets. A round running longer
# than this counts as stuck.
DISPATCHER_STALL_S = 90.0
# The event loop must run a callback within this time to count as alive.
LOOP_PING_TIMEOUT_S = 5.0


class Heartbeat(threading.Thread):
    """Writes this worker's heartbeat while its dispatcher and loop work."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        dispatcher: Dispatcher,
        runtime: Runtime,
    ) -> None:
        super().__init__(name="relay-heartbeat", daemon=True)
        self.worker_name = name
        self.dispatcher = dispatcher
        self.runtime = runtime
        self.keys = Keys(settings.key_prefix)
        self.file_path = settings.worker_heartbeat_file
        # Short timeouts: a Redis outage must not hold up the file's touch.
        self.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2
        )
        self._record = self.redis.register_script(lua.HEARTBEAT)
        self._stopping = threading.Event()
        self._redis_failing = False
        self._file_failing = False

    def run(self) -> None:
        while not self._stopping.is_set():
            self.beat_once()
            self._stopping.wait(WORKER_HEARTBEAT_INTERVAL_S)

    def beat_once(self) -> None:
        """Touch the file and record the heartbeat, if the worker is healthy."""
        problem = self._problem()
        if problem:
            log.warning("heartbeat.skipped", reason=problem)
            return
        if self.file_path:
            self._touch_file()
        try:
            self._record(
                keys=[self.keys.workers],
                args=[self.worker_name, WORKER_HEARTBEAT_KEPT_S],
            )
        except redis.RedisError as exc:
            # Logged once per outage rather than every few seconds.
            if not self._redis_failing:
                log.warning("heartbeat.redis_failed", error=repr(exc))
            self._redis_failing = True
            return
        if self._redis_failing:
            log.info("heartbeat.redis_recovered")
        self._redis_failing = False

    def _touch_file(self) -> None:
        try:
            Path(self.file_path).touch()
        except OSError as exc:
            if not self._file_failing:
                log.error("heartbeat.file_failed", path=self.file_path, error=repr(exc))
            self._file_failing = True
            return
        self._file_failing = False

    def stop(self) -> None:
        """Stop beating and remove this worker's heartbeat from Redis."""
        self._stopping.set()
        if self.is_alive():
            self.join(timeout=WORKER_HEARTBEAT_INTERVAL_S + 10)
        try:
            self.redis.zrem(self.keys.workers, self.worker_name)
        except redis.RedisError as exc:
            log.warning("heartbeat.remove_failed", error=repr(exc))
        self.redis.close()

    def remove_file(self) -> None:
        """Delete the heartbeat file, so the probe fails once the worker exits."""
        remove_file(self.file_path)

    def _problem(self) -> str:
        """Return why the worker is unhealthy, or an empty string."""
        if not self.dispatcher.is_alive():
            return "dispatcher thread ended"
        stalled_s = time.monotonic() - self.dispatcher.last_round_at
        if stalled_s > DISPATCHER_STALL_S:
            return f"dispatcher round running for {stalled_s:.0f} s"
        try:
            self.runtime.run(asyncio.sleep(0), LOOP_PING_TIMEOUT_S)
        except TimeoutError:
            return f"event loop did not respond within {LOOP_PING_TIMEOUT_S:g} s"
        return ""


def remove_file(path: str) -> None:
    """Delete the heartbeat file at ``path``, if one is configured and exists."""
    if path:
        Path(path).unlink(missing_ok=True)
