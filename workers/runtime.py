"""One event loop per worker process, with the clients every batch shares.

RQ runs each job in the worker's main thread. A job hands its coroutine to
this loop, which runs in its own thread for the life of the process. The
async Redis client and the two httpx clients (upstream and webhooks) so keep
their connection pools across jobs instead of opening new ones per batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis

from relay.ratelimit import RateLimiter
from relay.settings import Settings
from relay.store import Store
from relay.upstream import ModelGatesClient

T = TypeVar("T")

_lock = threading.Lock()
_runtime: Runtime | None = None


@dataclass(frozen=True)
class Poller:
    """Dependencies of a poll batch: the store, the client and the limiter."""

    store: Store
    modelgates: ModelGatesClient
    limiter: RateLimiter
    settings: Settings


class Runtime:
    """The worker process's event loop thread and shared clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relay-io", daemon=True
        )
        self._thread.start()
        self.run(self._open())

    async def _open(self) -> None:
        settings = self.settings
        self.redis = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5
        )
        self.store = Store(self.redis, settings.key_prefix, settings.retention_s)
        # trust_env=False: proxy variables in the environment must not reroute
        # the bearer token or webhooks through a host the operator did not name.
        self.upstream_http = httpx.AsyncClient(
            timeout=settings.poll_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        self.webhook_http = httpx.AsyncClient(
            timeout=settings.delivery_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self.poller = Poller(
            store=self.store,
            modelgates=ModelGatesClient(settings, self.upstream_http),
            limiter=RateLimiter(
                self.redis, self.store.keys, settings.upstream_rate_per_s
            ),
            settings=settings,
        )

    def run(
        self, coroutine: Coroutine[Any, Any, T], timeout_s: float | None = None
    ) -> T:
        """Run ``coroutine`` on the shared loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout_s)

    def close(self) -> None:
        """Close the clients and stop the loop thread."""
        self.run(self._close(), timeout_s=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

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


def close_runtime() -> None:
    """Close this process's runtime if one was created."""
    global _runtime
    with _lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None
