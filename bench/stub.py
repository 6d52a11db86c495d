"""A fast loopback HTTP/1.1 server that plays ModelGates and a webhook receiver.

``python -m bench.stub --ready-file PATH [--record]`` serves, with keep-alive:

- ``GET /api/v1/videos/{id}``: a ModelGates status body carrying ``id``. The
  status is ``in_progress``, except for IDs of the form
  ``lat-<terminal_epoch_ms>-<n>``, which report ``completed`` from that moment
  on. After ``POST /_throttle?retry_after_s=N`` the next one gets ``429`` with
  ``Retry-After: N``.
- ``POST`` to any other path: a webhook. It records the arrival time, the job
  ID and the relay's ``detected_at`` from the body, and returns 204.
- ``GET /_stats``: counters. ``GET /_arrivals``: the arrival time of every
  status request, kept only with ``--record``. ``GET /_webhooks``: the
  recorded webhooks.

Times are ``time.time()`` seconds, so the benchmark compares them with its
own clock. The server runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

VIDEO_PREFIX = "/api/v1/videos/"
LATENCY_PREFIX = "lat-"
MAX_HEAD_BYTES = 16 * 1024
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found"}
REASONS |= {429: "Too Many Requests"}


@dataclass
class Recorder:
    """Counters and records of one stub process."""

    record_arrivals: bool
    video_requests: int = 0
    webhooks: int = 0
    arrivals: list[float] = field(default_factory=list)
    received: list[tuple[float, str, float | None]] = field(default_factory=list)
    throttle_retry_after_s: int | None = None
    throttled_at: float | None = None


def video_body(job_id: str, now: float) -> bytes:
    """Return the status body of ``job_id`` at time ``now``."""
    status = "in_progress"
    if job_id.startswith(LATENCY_PREFIX):
        terminal_ms = int(job_id.split("-")[1])
        if now * 1000 >= terminal_ms:
            status = "completed"
    body: dict[str, Any] = {
        "id": job_id,
        "polling_url": f"https://modelgates.invalid{VIDEO_PREFIX}{job_id}",
        "status": status,
    }
    if status == "completed":
        body["generation_id"] = "gen-bench"
        body["unsigned_urls"] = [f"https://files.invalid/{job_id}.mp4"]
        body["usage"] = {"cost": 0.25, "is_byok": False}
    return json.dumps(body, separators=(",", ":")).encode()


def response(status: int, body: bytes, extra_headers: str = "") -> bytes:
    """Return a complete HTTP/1.1 response with a Content-Length."""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
        f"content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra_headers}\r\n"
    )
    return head.encode() + body


def detected_at_s(body: bytes) -> tuple[str, float | None]:
    """Return the job ID and the relay's ``detected_at`` of a webhook body."""
    try:
        document = json.loads(body)
        data = document["data"]
        job_id = str(data["job_id"])
    except (ValueError, KeyError, TypeError):
        return "", None
    try:
        stamp = str(data["relay"]["detected_at"]).replace("Z", "+00:00")
        return job_id, datetime.fromisoformat(stamp).timestamp()
    except (KeyError, TypeError, ValueError):
        return job_id, None


class StubProtocol(asyncio.Protocol):
    """One keep-alive connection, which responds to its requests in order."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = content_length(head)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.transport.write(self.handle(head, body))
            if "\nconnection: close" in head.lower():
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def handle(self, head: str, body: bytes) -> bytes:
        method, target = head.split(" ", 2)[:2]
        parts = urlsplit(target)
        now = time.time()
        if method == "GET" and parts.path.startswith(VIDEO_PREFIX):
            return self.video(unquote(parts.path[len(VIDEO_PREFIX) :]), now)
        if method == "POST" and parts.path == "/_throttle":
            query = parse_qs(parts.query)
            self.recorder.throttle_retry_after_s = int(query["retry_after_s"][0])
            return response(200, b"{}")
        if method == "POST":
            self.recorder.webhooks += 1
            job_id, detected = detected_at_s(body)
            self.recorder.received.append((now, job_id, detected))
            return response(204, b"")
        if method == "GET":
            return self.admin(parts.path)
        return response(400, b'{"error":"unsupported method"}')

    def video(self, job_id: str, now: float) -> bytes:
        recorder = self.recorder
        recorder.video_requests += 1
        if recorder.record_arrivals:
            recorder.arrivals.append(now)
        if recorder.throttle_retry_after_s is not None:
            retry_after_s = recorder.throttle_retry_after_s
            recorder.throttle_retry_after_s = None
            recorder.throttled_at = now
            return response(
                429,
                b'{"error":{"code":429,"message":"Rate limit exceeded"}}',
                f"retry-after: {retry_after_s}\r\n",
            )
        return response(200, video_body(job_id, now))

    def admin(self, path: str) -> bytes:
        recorder = self.recorder
        if path == "/_stats":
            document: Any = {
                "video_requests": recorder.video_requests,
                "webhooks": recorder.webhooks,
                "throttled_at": recorder.throttled_at,
            }
        elif path == "/_arrivals":
            document = {"arrivals": recorder.arrivals}
        elif path == "/_webhooks":
            document = {"webhooks": recorder.received}
        else:
            return response(404, b'{"error":"not found"}')
        return response(200, json.dumps(document).encode())


def content_length(head: str) -> int:
    """Return the Content-Length of a request head, 0 when it has none."""
    lowered = head.lower()
    start = lowered.find("\ncontent-length:")
    if start < 0:
        return 0
    line_end = lowered.find("\r\n", start + 1)
    value = lowered[
        start + len("\ncontent-length:") : None if line_end < 0 else line_end
    ]
    return int(value.strip())


async def serve(ready_file: Path, record_arrivals: bool) -> None:
    """Serve on a free loopback port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    recorder = Recorder(record_arrivals)
    server = await loop.create_server(
        lambda: StubProtocol(recorder), "127.0.0.1", 0, backlog=1024
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    port = server.sockets[0].getsockname()[1]
    write_ready_file(ready_file, port)
    async with server:
        await stopping.wait()


def write_ready_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` in one rename, so no reader sees half of it."""
    partial = path.with_suffix(".partial")
    partial.write_text(str(port))
    partial.replace(path)


class StubClient:
    """Reads a stub's counters and records over loopback."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.base_url, timeout=30, trust_env=False)

    def stats(self) -> dict[str, Any]:
        """Return the counters: video requests, webhooks, the 429's time."""
        return dict(self.http.get("/_stats").json())

    def video_requests(self) -> int:
        """Return how many status requests the stub has served."""
        return int(self.stats()["video_requests"])

    def arrivals(self) -> list[float]:
        """Return the arrival time of every status request (needs ``--record``)."""
        return list(self.http.get("/_arrivals").json()["arrivals"])

    def webhooks(self) -> list[tuple[float, str, float | None]]:
        """Return (arrival time, job ID, relay's detected_at) of each webhook."""
        rows = self.http.get("/_webhooks").json()["webhooks"]
        return [(row[0], row[1], row[2]) for row in rows]

    def throttle_next(self, retry_after_s: int) -> None:
        """Make the next status request get 429 with ``Retry-After``."""
        self.http.post("/_throttle", params={"retry_after_s": retry_after_s})

    def close(self) -> None:
        self.http.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-file", type=Path, required=True, help="port file")
    parser.add_argument(
        "--record", action="store_true", help="keep each status request's time"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.ready_file, args.record))


if __name__ == "__main__":
    main()
