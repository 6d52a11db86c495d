"""Per-request observation in the API: a request ID, metrics and one log line.

Every response carries ``x-request-id``: the client's own when it sent a
usable one, else a new one. Every log line written while the request runs
carries it as ``request_id``. The process counts requests by method, route
template and status class, and their durations by route, for ``/metrics``.
These two are the only series that describe one process, not the fleet.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from relay.stats import LATENCY_BUCKETS_S

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
_USABLE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


@dataclass
class HttpMetrics:
    """Request counts and duration histograms of this process.

    Counts are kept by status hundred and bucket index, which are cheap to
    compute per request; ``relay.metrics`` formats them when scraped.
    """

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    buckets: Counter[tuple[str, int]] = field(default_factory=Counter)
    sums: dict[str, float] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def observe(self, method: str, route: str, status: int, duration_s: float) -> None:
        self.requests[(method, route, status // 100)] += 1
        # The index of the first bound at or above the value; past the
        # last bound it counts only in the total.
        self.buckets[(route, bisect_left(LATENCY_BUCKETS_S, duration_s))] += 1
        self.sums[route] = self.sums.get(route, 0.0) + duration_s
        self.counts[route] += 1


# New request IDs are a random prefix per process and a counter: unique
# across processes and cheaper than reading 8 random bytes per request.
_PROCESS_PREFIX = os.urandom(4).hex()
_sequence = itertools.count(1)


def request_id_of(scope: Scope) -> str:
    """Return the client's usable ``x-request-id``, or a new unique one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _USABLE_REQUEST_ID.fullmatch(value):
                return bytes(value).decode()
            break
    return f"{_PROCESS_PREFIX}{next(_sequence):08x}"


def observe_requests(
    metrics: HttpMetrics, log_each: bool
) -> Callable[[ASGIApp], ASGIApp]:
    """Return a middleware factory that observes every HTTP request.

    With ``log_each`` it also writes one ``http.request`` line per request.
    Callers pass False when INFO lines are filtered anyway, because writing
    that line cost about a tenth of a request's CPU.
    """

    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            request_id = request_id_of(scope)
            # The server runs each request in its own task, which starts with
            # a copy of the connection's context, so nothing bound by an
            # earlier request is left to clear.
            structlog.contextvars.bind_contextvars(request_id=request_id)
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    headers = message.get("headers")
                    if isinstance(headers, list):
                        headers.append((REQUEST_ID_HEADER, request_id.encode()))
                    else:
                        message["headers"] = [
                            *(headers or ()),
                            (REQUEST_ID_HEADER, request_id.encode()),
                        ]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                duration_s = time.perf_counter() - started
                route = str(scope.get("path_template") or "unmatched")
                metrics.observe(scope["method"], route, status, duration_s)
                if log_each:
                    log.info(
                        "http.request",
                        method=scope["method"],
                        path=scope["path"],
                        route=route,
                        status_code=status,
                        duration_ms=round(duration_s * 1000, 1),
                    )

        return middleware

    return factory
