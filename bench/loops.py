"""Bare asyncio poll loops, no Redis and no RQ: the ceiling of one process.

``python -m bench.loops --client NAME --url URL ...`` keeps
``--concurrency`` requests in flight for ``--duration-s`` seconds, cycling
through the job IDs ``tp-0`` to ``tp-<jobs - 1>``, and prints one JSON line
with its own request count.

The clients, by ``--client``:

- ``httpx``: the relay's own upstream client (see ``poll_with_httpx``), so a
  change of client settings or transport in the relay shows up here as well.
- ``httpx-aiohttp``: httpx with the ``httpx-aiohttp`` transport and the same
  limits, for the record.
- ``aiohttp``: a plain aiohttp session with the same connection limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx

from relay.settings import Settings

# Names under which workers.runtime may expose a factory of the upstream client.
FACTORY_NAMES = (
    "build_upstream_client",
    "make_upstream_client",
    "create_upstream_client",
    "new_upstream_client",
    "upstream_client",
)
AUTH = {"authorization": "Bearer bench-modelgates-key"}

Fetch = Callable[[str], Awaitable[int]]


def fallback_client(settings: Settings) -> httpx.AsyncClient:
    """Return the client configuration workers/runtime.py used when this was written."""
    return httpx.AsyncClient(
        timeout=settings.poll_timeout_s,
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )


def find_client_factory() -> tuple[Callable[[Settings], httpx.AsyncClient], str] | None:
    """Return a factory of the upstream client that workers.runtime exposes, if any."""
    from workers import runtime

    for name in FACTORY_NAMES:
        factory = getattr(runtime, name, None)
        if callable(factory):
            return factory, f"workers.runtime.{name}(settings)"
    return None


async def run_loop(fetch: Fetch, args: argparse.Namespace) -> dict[str, Any]:
    """Keep ``--concurrency`` fetches in flight for ``--duration-s`` seconds."""
    jobs, concurrency = args.jobs, args.concurrency
    deadline = time.monotonic() + args.duration_s
    done = 0
    errors = 0

    async def worker(offset: int) -> None:
        nonlocal done, errors
        index = offset
        while time.monotonic() < deadline:
            try:
                await fetch(f"tp-{index % jobs}")
                done += 1
            except (httpx.HTTPError, aiohttp.ClientError, ValueError):
                errors += 1
            index += concurrency

    await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    return {"requests": done, "errors": errors}


def poll_with_httpx(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Poll through the relay's own upstream client, or the same configuration.

    The first of these that exists is used. A factory in ``workers.runtime``
    comes first. Next is the ``upstream_http`` of a ``workers.runtime.Runtime``,
    whose event loop thread then runs the loop as it runs the relay's batches.
    Last is a client built here with the settings the relay used when this
    module was written.
    """
    settings = Settings.from_env({"MODELGATES_BASE_URL": url})
    found = find_client_factory()
    if found is not None:
        factory, source = found

        async def with_factory() -> dict[str, Any]:
            async with factory(settings) as client:
                return await run_loop(httpx_fetch(client, url), args)

        return asyncio.run(with_factory()) | {"client": source}

    from workers.runtime import Runtime

    runtime = Runtime(settings)
    try:
        client = getattr(runtime, "upstream_http", None)
        if isinstance(client, httpx.AsyncClient):
            counts = runtime.run(run_loop(httpx_fetch(client, url), args))
            return counts | {"client": "workers.runtime.Runtime.upstream_http"}
    finally:
        runtime.close()

    async def with_fallback() -> dict[str, Any]:
        async with fallback_client(settings) as client:
            return await run_loop(httpx_fetch(client, url), args)

    return asyncio.run(with_fallback()) | {"client": "fallback_client()"}


def httpx_fetch(client: httpx.AsyncClient, url: str) -> Fetch:
    """Return a fetch that GETs one job's status and parses the JSON body."""

    async def fetch(job_id: str) -> int:
        reply = await client.get(f"{url}/api/v1/videos/{job_id}", headers=AUTH)
        json.loads(reply.content)
        return reply.status_code

    return fetch


async def poll_with_httpx_aiohttp(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Poll through httpx on the httpx-aiohttp transport, with the relay's limits."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    async with httpx.AsyncClient(
        transport=transport, timeout=10, follow_redirects=False, trust_env=False
    ) as client:
        counts = await run_loop(httpx_fetch(client, url), args)
    return counts | {"client": "httpx + httpx-aiohttp transport"}


async def poll_with_aiohttp(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Poll through a plain aiohttp session with the same connection limit."""
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def fetch(job_id: str) -> int:
            async with session.get(
                f"{url}/api/v1/videos/{job_id}", headers=AUTH
            ) as reply:
                json.loads(await reply.read())
                return reply.status

        counts = await run_loop(fetch, args)
    return counts | {"client": f"aiohttp {aiohttp.__version__}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--client", choices=("httpx", "httpx-aiohttp", "aiohttp"), required=True
    )
    parser.add_argument("--url", required=True, help="stub origin on 127.0.0.1")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=20000, help="distinct job IDs")
    parser.add_argument("--duration-s", type=float, required=True)
    args = parser.parse_args()
    if args.client == "httpx":
        result = poll_with_httpx(args.url, args)
    elif args.client == "httpx-aiohttp":
        result = asyncio.run(poll_with_httpx_aiohttp(args.url, args))
    else:
        result = asyncio.run(poll_with_aiohttp(args.url, args))
    print(json.dumps(result))  # noqa: T201 - the parent reads this line


if __name__ == "__main__":
    main()
