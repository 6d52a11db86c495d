"""``relay dev``: Redis, the simulator, the API, a worker and a receiver, together.

Every part is a real process (the receiver is a thread) on 127.0.0.1, wired
with fresh random credentials, and all of it stops on Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from relay.errors import RelayError
from relay.receiver import Receiver, describe
from relay.redis_server import RedisServer, free_port
from relay.signing import generate_secret


@dataclass
class Stack:
    """The running parts and the settings they share."""

    api_url: str
    api_token: str
    signing_secret: str
    simulator_url: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, *arguments: str) -> subprocess.Popen[bytes]:
        """Start ``python -m relay ARGUMENTS`` with the stack's environment."""
        # A process group of its own keeps a terminal's Ctrl-C away from the
        # child, so ``stop`` shuts the parts down in order.
        process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [sys.executable, "-m", "relay", *arguments],
            env=self.env,
            process_group=0,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process: SIGTERM, then SIGKILL after 10 s."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_http(url: str, timeout_s: float = 30.0) -> None:
    """Wait until ``url`` responds with a status below 500."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not respond within {timeout_s:g} s")
        time.sleep(0.1)


@contextmanager
def running_stack(
    api_port: int, overrides: dict[str, str] | None = None
) -> Iterator[Stack]:
    """Start every part, yield the stack, and stop all of it on exit."""
    _check_port_free(api_port)
    with tempfile.TemporaryDirectory(prefix="relay-dev-") as data_dir:
        redis_server = RedisServer(Path(data_dir) / "redis").start()
        simulator_port = free_port()
        env = (
            os.environ
            | {
                "REDIS_URL": redis_server.url,
                "RELAY_API_HOST": "127.0.0.1",
                "RELAY_API_PORT": str(api_port),
                "RELAY_API_TOKEN": secrets.token_urlsafe(24),
                "RELAY_SIGNING_SECRET": generate_secret(),
                "MODELGATES_BASE_URL": f"http://127.0.0.1:{simulator_port}",
                "MODELGATES_API_KEY": "mg-dev-" + secrets.token_urlsafe(12),
                "RELAY_CALLBACK_ALLOW_CIDRS": "127.0.0.0/8,::1/128",
                "RELAY_POLL_FIRST_DELAY_S": "1",
                "RELAY_POLL_MAX_INTERVAL_S": "3",
                # Below the 10 s that Stack.stop waits before SIGKILL.
                "RELAY_SHUTDOWN_GRACE_S": "5",
            }
            | (overrides or {})
        )
        stack = Stack(
            api_url=f"http://127.0.0.1:{api_port}",
            api_token=env["RELAY_API_TOKEN"],
            signing_secret=env["RELAY_SIGNING_SECRET"],
            simulator_url=env["MODELGATES_BASE_URL"],
            env=env,
        )
        try:
            if stack.spawn("migrate").wait(timeout=60) != 0:
                raise RuntimeError("relay migrate failed; see the lines above")
            stack.spawn("simulate", "--port", str(simulator_port))
            stack.spawn("api")
            stack.spawn("worker")
            wait_for_http(f"{stack.api_url}/healthz")
            wait_for_http(f"{stack.simulator_url}/_sim/stats")
            yield stack
        finally:
            stack.stop()
            redis_server.stop()


def _check_port_free(port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise RelayError(
                f"port {port} on 127.0.0.1 is in use; stop what runs there or "
                "pick another with --port"
            ) from None


def banner(stack: Stack, receiver: Receiver) -> str:
    """Return the text ``relay dev`` prints once everything is up."""
    body = (
        '{"job_id": "sim.pending*2.in_progress*3.completed", '
        f'"callback_url": "{receiver.url}/webhooks", '
        '"metadata": {"order": 42}}'
    )
    curl = (
        f"curl -sS -X POST {stack.api_url}/v1/registrations \\\n"
        f"    -H 'Authorization: Bearer {stack.api_token}' \\\n"
        "    -H 'Content-Type: application/json' \\\n"
        f"    -d {shlex.quote(body)}"
    )
    return (
        "\nmodelgates-relay is running.\n"
        f"  API:            {stack.api_url}  (OpenAPI at {stack.api_url}/schema)\n"
        f"  API token:      {stack.api_token}\n"
        f"  Signing secret: {stack.signing_secret}\n"
        f"  Simulator:      {stack.simulator_url}\n"
        f"  Receiver:       {receiver.url}  (prints each verified webhook)\n\n"
        f"Register a job:\n  {curl}\n\nPress Ctrl-C to stop.\n"
    )


def run(api_port: int) -> None:
    """Run the development stack until Ctrl-C or SIGTERM."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Closing the terminal sends SIGHUP; the children run in their own
    # process groups, so they would outlive relay dev without this.
    signal.signal(signal.SIGHUP, stop)
    with running_stack(api_port) as stack:
        receiver = Receiver(
            stack.signing_secret,
            on_receive=lambda item: print("webhook:", describe(item), flush=True),
        ).start()
        try:
            print(banner(stack, receiver), flush=True)
            while all(process.poll() is None for process in stack.processes[1:]):
                time.sleep(0.5)
            print("a relay process exited; stopping the others", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nstopping...", file=sys.stderr)
        finally:
            receiver.stop()
