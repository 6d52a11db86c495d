"""Start and stop the benchmark's subprocesses and throwaway Redis servers.

Every process runs in its own process group on 127.0.0.1. ``stop`` ends the
group, so children that a process forked (RQ work horses, the RQ scheduler)
end with it. An ``atexit`` hook stops whatever a failed scenario left running.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from relay.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK_CIDRS = "127.0.0.0/8,::1/128"
# Variables that the relay or its libraries read. The caller's shell may set
# them, so they are dropped before a scenario sets its own.
_INHERITED_PREFIXES = ("RELAY_", "MODELGATES_", "REDIS_", "RQ_", "BENCH_")

_running: list[subprocess.Popen[bytes]] = []
_log_paths: dict[int, Path] = {}


def clean_environ(overrides: Mapping[str, str]) -> dict[str, str]:
    """Return this process's environment without relay settings, plus overrides."""
    base = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_INHERITED_PREFIXES)
    }
    return base | dict(overrides)


def start(
    args: list[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``python ARGS`` from the repository root, logging to ``log_path``."""
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - fixed interpreter and arguments
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=clean_environ(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    _running.append(process)
    _log_paths[process.pid] = log_path
    return process


def start_server(
    args: list[str], log_path: Path, ready_path: Path, timeout_s: float = 15.0
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server that writes its port to ``--ready-file``; return both.

    Raises RuntimeError, with the end of the server's log, when the server exits
    or writes no port within ``timeout_s``.
    """
    ready_path.unlink(missing_ok=True)
    process = start([*args, "--ready-file", str(ready_path)], log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready_path.exists() and ready_path.read_text().strip():
            return process, int(ready_path.read_text())
        if process.poll() is not None:
            break
        time.sleep(0.02)
    stop(process)
    raise RuntimeError(
        f"server {' '.join(args)} did not start. Its log ends with:\n"
        + log_tail(log_path)
    )


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Send SIGTERM, wait up to ``timeout_s``, then SIGKILL the process group."""
    stop_many([process], timeout_s)


def stop_many(group: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """Send SIGTERM to all of ``group`` at once, then SIGKILL what remains.

    RQ workers take a second SIGTERM as a request to stop at once, so each
    process gets exactly one.
    """
    for process in group:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in group:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        # The group ID is the leader's PID, because start() made it a leader.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        if process in _running:
            _running.remove(process)


def stop_all() -> None:
    """Stop every process started here that is still tracked."""
    stop_many(list(reversed(_running)), timeout_s=5.0)


atexit.register(stop_all)


def process_log_tail(process: subprocess.Popen[bytes], size: int = 3000) -> str:
    """Return the end of the log of a process that ``start`` started."""
    log_path = _log_paths.get(process.pid)
    return log_tail(log_path, size) if log_path else ""


def last_json_line(log_path: Path) -> dict[str, Any]:
    """Return the last line of a log that is a JSON object.

    The benchmark's helper programs print their result as one such line.
    Raises RuntimeError, with the end of the log, when there is none.
    """
    for line in reversed(log_tail(log_path, 100_000).splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"no result line in {log_path}:\n{log_tail(log_path)}")


def log_tail(log_path: Path, size: int = 3000) -> str:
    """Return the last ``size`` characters of a log file, or an empty string."""
    try:
        return log_path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return ""


@contextmanager
def redis_server(data_dir: Path) -> Iterator[RedisServer]:
    """Run a throwaway Redis-compatible server for the length of a ``with`` block."""
    server = RedisServer(data_dir).start()
    try:
        yield server
    finally:
        server.stop()


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a process has used, from /proc."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces, so fields are counted after its ")".
    fields = raw.rsplit(")", 1)[1].split()
    utime_ticks, stime_ticks = int(fields[11]), int(fields[12])
    return (utime_ticks + stime_ticks) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: redis.Redis) -> float:
    """Return the CPU time the Redis server has used, from INFO cpu."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_commands(client: redis.Redis) -> int:
    """Return how many commands the Redis server has processed so far."""
    return int(client.info("stats")["total_commands_processed"])


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05
) -> bool:
    """Call ``predicate`` until it returns True or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until ``url`` responds with 200, or raise RuntimeError after the timeout."""

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            return httpx.get(url, timeout=1.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(ready, timeout_s, interval_s=0.1):
        raise RuntimeError(f"{url} did not respond with 200 within {timeout_s:g} s")


def relay_env(
    redis_url: str, upstream_url: str, api_key: str, **overrides: str
) -> dict[str, str]:
    """Return a valid environment for ``relay worker`` and ``relay api``.

    Callbacks may reach loopback, because every receiver runs on 127.0.0.1.
    Logs are JSON at WARNING, so logging costs the relay little and the log
    files stay small. ``overrides`` replace any of these.
    """
    from relay.signing import generate_secret

    env = {
        "REDIS_URL": redis_url,
        "MODELGATES_BASE_URL": upstream_url,
        "MODELGATES_API_KEY": api_key,
        "RELAY_SIGNING_SECRET": generate_secret(),
        "RELAY_CALLBACK_ALLOW_CIDRS": LOOPBACK_CIDRS,
        "RELAY_LOG_FORMAT": "json",
        "RELAY_LOG_LEVEL": "WARNING",
    }
    return env | overrides


def start_relay(
    command: str, env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """Start ``relay COMMAND`` (``worker`` or ``api``) with ``env``."""
    return start(["-m", "relay", command], log_path, env)
