"""A small HTTP/1.1 load generator: keep-alive connections, one request at a time.

``python -m bench.loadgen --port PORT --token T --connections N ...`` opens N
connections to 127.0.0.1 and sends ``POST /v1/registrations`` on each, the
next request as soon as the previous response is complete, for the warm-up
plus the measured duration. Every request carries a new job ID, so each one
creates a registration. It prints one JSON line: completed requests and
latency percentiles within the measured window, and the status codes seen.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.report import percentile

MAX_HEAD_BYTES = 64 * 1024
DRAIN_TIMEOUT_S = 5.0


@dataclass
class Tally:
    """Counts and latencies of the requests completed inside the window."""

    window_start: float
    window_end: float
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    disconnects: int = 0

    def record(self, sent_at: float, done_at: float, status: int) -> None:
        if self.window_start <= done_at <= self.window_end:
            self.latencies_s.append(done_at - sent_at)
            self.statuses[status] += 1


class Connection(asyncio.Protocol):
    """One keep-alive connection that sends a new request per response."""

    def __init__(self, args: argparse.Namespace, index: int, tally: Tally) -> None:
        self.args = args
        self.index = index
        self.tally = tally
        self.sequence = 0
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send_next()

    def send_next(self) -> None:
        assert self.transport is not None
        if time.monotonic() >= self.tally.window_end:
            self.transport.close()
            return
        self.sequence += 1
        self.sent_at = time.monotonic()
        self.transport.write(self.request())

    def request(self) -> bytes:
        args = self.args
        job_id = f"{args.id_prefix}-{self.index}-{self.sequence}"
        body = json.dumps(
            {
                "job_id": job_id,
                "callback_url": f"http://127.0.0.1:9/hooks/{self.index}",
                "metadata": {"sequence": self.sequence},
            },
            separators=(",", ":"),
        ).encode()
        head = (
            f"POST /v1/registrations HTTP/1.1\r\n"
            f"host: 127.0.0.1:{args.port}\r\n"
            f"authorization: Bearer {args.token}\r\n"
            f"content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES and self.transport is not None:
                self.transport.close()
            return
        head = bytes(self.buffer[:end]).decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "content-length":
                length = int(value)
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        status = int(head.split(" ", 2)[1])
        self.tally.record(self.sent_at, time.monotonic(), status)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.monotonic() < self.tally.window_end:
            self.tally.disconnects += 1
        if not self.closed.done():
            self.closed.set_result(None)


async def run_connection(args: argparse.Namespace, index: int, tally: Tally) -> None:
    """Keep one connection busy until the window ends, reconnecting if it drops."""
    loop = asyncio.get_running_loop()
    attempt = 0
    while time.monotonic() < tally.window_end:
        attempt += 1
        # Each connection numbers its job IDs, so a new number per connection
        # keeps every job ID unique.
        number = index * 1000 + attempt
        _, protocol = await loop.create_connection(
            functools.partial(Connection, args, number, tally), "127.0.0.1", args.port
        )
        remaining_s = tally.window_end - time.monotonic() + DRAIN_TIMEOUT_S
        try:
            await asyncio.wait_for(asyncio.shield(protocol.closed), remaining_s)
        except TimeoutError:
            if protocol.transport is not None:
                protocol.transport.abort()
            return


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    """Run every connection and summarize the measured window."""
    started = time.monotonic()
    tally = Tally(
        window_start=started + args.warmup_s,
        window_end=started + args.warmup_s + args.duration_s,
    )
    await asyncio.gather(
        *(run_connection(args, index, tally) for index in range(args.connections))
    )
    latencies_ms = [latency * 1000 for latency in tally.latencies_s]
    completed = len(latencies_ms)
    return {
        "completed": completed,
        "requests_per_s": round(completed / args.duration_s, 1),
        "p50_ms": percentile(latencies_ms, 0.50),
        "p99_ms": percentile(latencies_ms, 0.99),
        "statuses": {str(code): count for code, count in tally.statuses.items()},
        "disconnects": tally.disconnects,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--token", required=True, help="bearer token to send")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--id-prefix", required=True, help="makes job IDs unique")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(generate(args))))  # noqa: T201 - read by the parent


if __name__ == "__main__":
    main()
