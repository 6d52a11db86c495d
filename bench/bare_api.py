"""The API baseline: a bare Litestar app whose one POST does one Redis write.

``python -m bench.bare_api --redis-url URL --ready-file PATH`` serves
``POST /v1/registrations`` (a JSON body with ``job_id`` and ``callback_url``,
stored with one ``HSET``) and ``GET /healthz`` on a free loopback port. It runs
under uvicorn with the settings ``relay api`` uses, until SIGTERM.
"""

from __future__ import annotations

import argparse
import secrets
import socket
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
import uvicorn
from litestar import Litestar, get, post
from litestar.datastructures import State

from bench.stub import write_ready_file


class RegistrationCreate(msgspec.Struct):
    """The request body: the same fields the relay's API takes."""

    job_id: str
    callback_url: str
    events: list[str] | None = None
    metadata: dict[str, Any] | None = None


@post("/v1/registrations", status_code=201)
async def create_registration(data: RegistrationCreate, state: State) -> dict[str, str]:
    """Store the registration with one HSET and return its ID."""
    registration_id = "reg_" + secrets.token_urlsafe(18)
    await state.redis.hset(
        f"bare:reg:{registration_id}",
        mapping={"job_id": data.job_id, "callback_url": data.callback_url},
    )
    return {"id": registration_id, "job_id": data.job_id, "state": "tracking"}


@get("/healthz")
async def healthz() -> dict[str, str]:
    """Report that the process is alive."""
    return {"status": "ok"}


def create_app(redis_url: str) -> Litestar:
    """Build the app. Its Redis client connects on the first request."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)

    async def close_redis() -> None:
        await client.aclose()

    return Litestar(
        route_handlers=[create_registration, healthz],
        state=State({"redis": client}),
        on_shutdown=[close_redis],
        logging_config=None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--ready-file", type=Path, required=True, help="port file")
    args = parser.parse_args()
    # Bind here, so the port is known before uvicorn starts.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    write_ready_file(args.ready_file, listener.getsockname()[1])
    # The same server settings as `relay api` (relay/cli.py).
    config = uvicorn.Config(
        create_app(args.redis_url),
        log_config=None,
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
