"""Webhook receivers for tests: real HTTP servers on loopback.

Signatures are checked with the ``standardwebhooks`` library, never with the
relay's own signing code. Each path can be given a list of behaviours that the
receiver plays in order, one per request, the last repeating.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, with the verification result."""

    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] | None
    received_at: float

    @property
    def verified(self) -> bool:
        return self.payload is not None


@dataclass(frozen=True)
class Behaviour:
    """How to respond to one request: wait, then reply with a status."""

    status: int = 204
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


class WebhookReceiver:
    """Records every POST and responds by the behaviours set for its path."""

    def __init__(self, secret: str) -> None:
        self.webhook = Webhook(secret)
        self.deliveries: list[Delivery] = []
        self.started = 0
        self.behaviours: dict[str, list[Behaviour]] = {}
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str = "/hook") -> str:
        """Return the callback URL of ``path`` on this receiver."""
        return self.base_url + path

    def script(self, path: str, *behaviours: Behaviour) -> None:
        """Respond to requests for ``path`` with ``behaviours`` in order."""
        self.behaviours[path] = list(behaviours)

    def verified(self) -> list[Delivery]:
        """Return the deliveries whose signature verified."""
        with self._lock:
            return [item for item in self.deliveries if item.verified]

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Delivery]:
        """Wait until ``count`` verified deliveries arrived; return all of them."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while sum(item.verified for item in self.deliveries) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} verified webhooks within {timeout_s} s, "
                        f"got {sum(i.verified for i in self.deliveries)} "
                        f"of {len(self.deliveries)} requests"
                    )
                self._condition.wait(left)
            return [item for item in self.deliveries if item.verified]

    def wait_started(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` requests have arrived, with or without a response."""
        with self._condition:
            if not self._condition.wait_for(
                lambda: self.started >= count, timeout=timeout_s
            ):
                raise AssertionError(f"expected {count} requests within {timeout_s} s")

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> Behaviour:
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            payload = None
        with self._condition:
            self.started += 1
            self._condition.notify_all()
            script = self.behaviours.get(path, [Behaviour()])
            behaviour = script.pop(0) if len(script) > 1 else script[0]
        time.sleep(behaviour.delay_s)
        # Record after the delay, so a request the relay gave up on mid-wait
        # still shows, but only once its response is decided.
        with self._condition:
            self.deliveries.append(Delivery(path, headers, body, payload, time.time()))
            self._condition.notify_all()
        return behaviour

    def start(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            behaviour = receiver._handle(self.path, headers, body)
            try:
                self.send_response(behaviour.status)
                for name, value in behaviour.headers:
                    self.send_header(name, value)
                # A 204 carries no body; stray bytes would corrupt the next
                # response on this keep-alive connection.
                body = b"" if behaviour.status == 204 else b"ok"
                if behaviour.status != 204:
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def running_receiver(secret: str) -> Iterator[WebhookReceiver]:
    """Start a receiver for the length of a ``with`` block."""
    receiver = WebhookReceiver(secret).start()
    try:
        yield receiver
    finally:
        receiver.stop()


class RawServer:
    """A TCP server on loopback whose replies a test writes byte by byte."""

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self._reply = reply
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.connections = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                _read_request(conn)
                self._reply(conn)
            except OSError:
                pass

    def start(self) -> RawServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=2)
        self._listener.close()


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request with a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        rest += chunk


@contextmanager
def running_raw_server(reply: Callable[[socket.socket], None]) -> Iterator[RawServer]:
    """Start a RawServer for the length of a ``with`` block."""
    server = RawServer(reply).start()
    try:
        yield server
    finally:
        server.stop()
