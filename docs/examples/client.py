"""Register a ModelGates job with the relay, read it back, list attempts, delete it.

    RELAY_URL=http://127.0.0.1:8000 RELAY_API_KEY=... python docs/examples/client.py

RELAY_JOB_ID sets the job ID. The default is a script that the simulator of
``relay dev`` runs. The webhook goes to a receiver on 127.0.0.1:9000. Needs
httpx.
"""

import os
import sys
from typing import Any

import httpx

CALLBACK_URL = "http://127.0.0.1:9000/webhooks"
DEFAULT_JOB_ID = "sim.pending*2.in_progress.completed"


class RelayError(Exception):
    """A request that the relay rejected, with the problem's detail as message."""


def check(response: httpx.Response) -> Any:
    """Return the JSON body of a 2xx response, or raise RelayError for a problem."""
    if response.is_success:
        return response.json() if response.content else None
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError):
        detail = response.text
    request = response.request
    raise RelayError(
        f"{request.method} {request.url.path}: {response.status_code} {detail}"
    )


def run(relay: httpx.Client, job_id: str) -> None:
    """Create, read, inspect and delete one registration, printing each step."""
    registration = check(
        relay.post(
            "/v1/registrations",
            json={
                "job_id": job_id,
                "callback_url": CALLBACK_URL,
                "metadata": {"order": 42},
            },
        )
    )
    registration_id = registration["id"]
    print(f"registered {registration_id} (state {registration['state']})")

    registration = check(relay.get(f"/v1/registrations/{registration_id}"))
    polls = registration["upstream"]["polls"]
    print(f"read {registration_id}: state {registration['state']}, {polls} polls")

    attempts = check(relay.get(f"/v1/registrations/{registration_id}/attempts"))
    print(f"attempts: {len(attempts['attempts'])}")

    check(relay.delete(f"/v1/registrations/{registration_id}"))
    print(f"deleted {registration_id}")


def main() -> int:
    base_url = os.environ.get("RELAY_URL")
    api_key = os.environ.get("RELAY_API_KEY")
    if not base_url or not api_key:
        print("set RELAY_URL and RELAY_API_KEY first", file=sys.stderr)
        return 2
    job_id = os.environ.get("RELAY_JOB_ID", DEFAULT_JOB_ID)

    with httpx.Client(
        base_url=base_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    ) as relay:
        try:
            run(relay, job_id)
        except (RelayError, httpx.HTTPError) as exc:
            print(f"request failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
