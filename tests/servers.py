"""Run ASGI apps under a real uvicorn server on loopback, for integration tests."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

STARTUP_TIMEOUT_S = 10.0


@contextmanager
def serve_in_thread(app: Any, *, shutdown_timeout_s: int = 2) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread and yield its base URL.

    On exit the server stops accepting connections, gives running requests up to
    ``shutdown_timeout_s`` seconds to finish, cancels the rest and joins the thread.
    uvicorn takes that timeout as whole seconds. Raises RuntimeError when the server
    fails to start within STARTUP_TIMEOUT_S.
    """
    # Binding the socket here, not in uvicorn, gives the port before the server starts
    # and leaves no window in which another process could take it.
    # asyncio sets TCP_NODELAY only on connections whose socket names IPPROTO_TCP.
    # With proto 0, Nagle's algorithm and delayed ACKs added about 40 ms to every
    # request on Linux loopback.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=shutdown_timeout_s,
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[listener])
        except BaseException as exc:  # noqa: BLE001 - reported by the waiting thread
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        _wait_until_started(server, thread, errors)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=shutdown_timeout_s + 1)
        if thread.is_alive():
            # force_exit stops uvicorn waiting for connections and lifespan shutdown.
            server.force_exit = True
            thread.join(timeout=5)
        listener.close()


def _wait_until_started(
    server: uvicorn.Server, thread: threading.Thread, errors: list[BaseException]
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            cause = errors[0] if errors else None
            raise RuntimeError("uvicorn stopped before it started serving") from cause
        if time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start within {STARTUP_TIMEOUT_S} s")
        time.sleep(0.01)
