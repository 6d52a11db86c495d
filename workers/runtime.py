"""One event loop per worker process, with the clients every batch shares.

RQ runs each job in the worker's main thread. A job hands its coroutine to
this loop, which runs in its own thread for the life of the process. The
async Redis client and the two httpx clients (upstream and webhooks) so keep
their connection pools across jobs instead of opening new ones per batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis
import structlog
from httpx_aiohttp import AiohttpTransport

from relay.ratelimit import RateLimiter
from relay.safe_transport import build_safe_client
from relay.settings import Settings
from relay.store import Store
from relay.tenants import Tenants
from relay.upstream import ModelGatesClient
from workers.keychain import Keychain

T = TypeVar("T")
log = structlog.get_logger(__name__)

# Batches one process runs at once. Two keep the network busy while RQ
# fetches the next job; more only hold claims longer.
MAX_BATCHES_IN_FLIGHT = 2
# Concurrent polls and attempts wait for one of these rather than opening more.
REDIS_CONNECTIONS = 64
# While every batch slot is taken, check this often whether the worker stops.
SLOT_WAIT_S = 0.1
# After the shutdown grace, wait this long for cancelled work to unwind.
CANCEL_WAIT_S = 2.0

_lock = threading.Lock()
_runtime: Runtime | None = None


@dataclass(frozen=True)
class Poller:
    """Dependencies of a poll batch: the store, the client and the limiter."""

    store: Store
    modelgates: ModelGatesClient
    limiter: RateLimiter
    settings: Settings
    keychain: Keychain


def build_upstream_client(settings: Settings) -> httpx.AsyncClient:
    """Return the httpx client every poll of this process shares.

    It sends through aiohttp (``httpx-aiohttp``): with a hundred requests in
    flight, httpx's own connection pool served under a tenth of the polls per
    second on the 2-core machine behind docs/performance.md.
    """
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    # trust_env=False: proxy variables in the environment must not reroute
    # the bearer token through a host the operator did not name.
    return httpx.AsyncClient(
        transport=AiohttpTransport(trust_env=False, limits=limits),
        timeout=settings.poll_timeout_s,
        follow_redirects=False,
        trust_env=False,
    )


def build_webhook_client(settings: Settings) -> httpx.AsyncClient:
    """Return the httpx client every webhook attempt of this process shares.

    Its transport resolves each callback host once per connection and connects
    only to addresses that pass the ``url_safety`` rules.
    """
    return build_safe_client(settings.delivery_timeout_s, settings.callback_allow_cidrs)


class Runtime:
    """The worker process's event loop thread and shared clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relay-io", daemon=True
        )
        self._thread.start()
        self._slots = threading.BoundedSemaphore(MAX_BATCHES_IN_FLIGHT)
        self._stopping = threading.Event()
        self.run(self._open())

    async def _open(self) -> None:
        settings = self.settings
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=REDIS_CONNECTIONS,
            timeout=30,
            socket_timeout=10,
            socket_connect_timeout=5,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.store = Store(self.redis, settings.key_prefix, settings.retention_s)
        self.keychain = Keychain(
            Tenants(self.redis, self.store.keys, settings.encryption_keys), settings
        )
        self.upstream_http = build_upstream_client(settings)
        self.webhook_http = build_webhook_client(settings)
        # Imported here: workers.deliver imports this module for its RQ job.
        from workers.deliver import Deliverer

        self.deliverer = Deliverer(
            self.store, self.webhook_http, settings, self.keychain
        )
        self.poller = Poller(
            store=self.store,
            modelgates=ModelGatesClient(settings, self.upstream_http),
            limiter=RateLimiter(
                self.redis, self.store.keys, settings.upstream_rate_per_s
            ),
            settings=settings,
            keychain=self.keychain,
        )

    def hand_off(self, coroutine: Coroutine[Any, Any, object], batch: str) -> None:
        """Start ``coroutine`` on the loop and return once it is accepted.

        The RQ job returns as soon as its batch is running, so RQ fetches the
        next batch while this one waits on the network. At most
        ``MAX_BATCHES_IN_FLIGHT`` run at once; past that the call blocks. Once
        the worker stops taking batches, the batch is dropped unstarted and
        its claim is released at shutdown. A batch lost with the process is
        safe too: its claims expire and the work becomes due again.
        """
        if not self._take_slot():
            coroutine.close()
            log.info("batch.skipped", batch=batch, reason="worker stopping")
            return
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)

        def release(done: concurrent.futures.Future[object]) -> None:
            self._slots.release()
            if not done.cancelled() and done.exception() is not None:
                log.error("batch.failed", batch=batch, error=repr(done.exception()))

        future.add_done_callback(release)

    def _take_slot(self) -> bool:
        """Take a batch slot, or return False once the worker stops."""
        while not self._stopping.is_set():
            if self._slots.acquire(timeout=SLOT_WAIT_S):
                return True
        return False

    def stop_taking_batches(self) -> None:
        """Make ``hand_off`` drop new batches. Signal handlers may call this."""
        self._stopping.set()

    def drain(self, timeout_s: float) -> bool:
        """Wait until no batch is in flight; return False on timeout."""
        deadline = time.monotonic() + timeout_s
        acquired_slots = 0
        try:
            while acquired_slots < MAX_BATCHES_IN_FLIGHT:
                left_s = max(0.0, deadline - time.monotonic())
                if not self._slots.acquire(timeout=left_s):
                    return False
                acquired_slots += 1
            return True
        finally:
            for _ in range(acquired_slots):
                self._slots.release()

    def run(
        self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None
    ) -> T:
        """Run ``coroutine`` on the shared loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout_s)

    def close(self, deadline: float | None = None) -> None:
        """Let running work finish until ``deadline``, cancel the rest, close.

        ``deadline`` is a ``time.monotonic()`` value, by default the shutdown
        grace from now. Cancelled polls and attempts leave their claims in
        place, so the caller releases them afterwards.
        """
        if deadline is None:
            deadline = time.monotonic() + self.settings.shutdown_grace_s
        self.stop_taking_batches()
        finished = self.drain(deadline - time.monotonic())
        if finished:
            finished = self.run(self._wait_attempts(deadline - time.monotonic()))
        if not finished:
            cancelled = self.run(self._cancel_all(), CANCEL_WAIT_S + 5)
            log.warning("runtime.work_cancelled", tasks=cancelled)
        try:
            self.run(self._close(), timeout_s=CANCEL_WAIT_S + 5)
        except TimeoutError:
            log.warning("runtime.close_timed_out")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    async def _wait_attempts(self, timeout_s: float) -> bool:
        """Wait for the running webhook attempts, or return False on timeout."""
        if not self.deliverer.tasks:
            return True
        tasks = set(self.deliverer.tasks)
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, timeout_s))
        return not pending

    async def _cancel_all(self) -> int:
        """Cancel every task on the loop, including polls a cancelled batch left."""
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
        return len(tasks)

    async def _close(self) -> None:
        await self.upstream_http.aclose()
        await self.webhook_http.aclose()
        await self.redis.aclose()


def get_runtime() -> Runtime:
    """Return this process's runtime, creating it from the environment once."""
    global _runtime
    with _lock:
        if _runtime is None:
            settings = Settings.from_env()
            settings.require_worker()
            _runtime = Runtime(settings)
        return _runtime


def install_runtime(runtime: Runtime) -> None:
    """Make ``runtime`` the one ``get_runtime`` returns in this process."""
    global _runtime
    with _lock:
        _runtime = runtime


def close_runtime(deadline: float | None = None) -> None:
    """Close this process's runtime, if one was created, as ``Runtime.close``."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close(deadline)
            _runtime = None
