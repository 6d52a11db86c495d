"""A webhook receiver for development and demos that verifies every signature.

Verification uses the ``standardwebhooks`` library, an implementation
independent of the relay's own signing code. ``POST /fail-once/...`` returns
500 to the first delivery of each webhook, to show retries.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One verified webhook."""

    webhook_id: str
    path: str
    payload: dict[str, Any]


class Receiver:
    """An HTTP server on 127.0.0.1 that stores the webhooks it verified."""

    def __init__(
        self, secret: str, on_receive: Callable[[Received], None] | None = None
    ) -> None:
        self.webhook = Webhook(secret)
        self.on_receive = on_receive
        self.received: list[Received] = []
        self.rejected = 0
        self._failed_once: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def _accept(self, path: str, headers: dict[str, str], body: bytes) -> int:
        try:
            payload = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            with self._lock:
                self.rejected += 1
            return 401
        webhook_id = headers.get("webhook-id", "")
        with self._lock:
            if path.startswith("/fail-once/") and webhook_id not in self._failed_once:
                self._failed_once.add(webhook_id)
                return 500
            received = Received(webhook_id, path, payload)
            # Report before storing, so a waiter that finds the webhook stored
            # never prints its summary ahead of this line.
            if self.on_receive is not None:
                self.on_receive(received)
            self.received.append(received)
        return 204

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length > MAX_BODY_BYTES:
                    self.send_error(413)
                    return
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._accept(self.path, headers, body)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def describe(received: Received) -> str:
    """Return a one-line summary of a verified webhook."""
    data = received.payload.get("data", {})
    detail = data.get("reason") or data.get("error") or ""
    urls = data.get("unsigned_urls") or []
    parts = [
        f"{received.payload.get('type', '?'):<23}",
        f"job={data.get('job_id')}",
        f"webhook-id={received.webhook_id}",
        "signature verified",
    ]
    if urls:
        parts.append(f"url={urls[0]}")
    if detail:
        parts.append(f"detail={json.dumps(detail)}")
    return "  ".join(parts)
