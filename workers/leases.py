"""Claims on due work that a worker holds, and their release when it stops.

A claim moves schedule members to one lease score (see ``lua.CLAIM``). A
stopping worker releases the claims of the batches it took but did not finish:
``lua.RELEASE`` makes due now every member that still has the claim's score,
so another worker takes it at once instead of after the lease.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import redis
import structlog
from rq.job import Job

from relay import lua

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Claim:
    """Members of one schedule that a CLAIM call leased together."""

    schedule: str
    # The score CLAIM set, as the exact decimal text it returned.
    lease_until: str
    members: tuple[str, ...]

    def job_meta(self) -> dict[str, str]:
        """Return the RQ job metadata that lets the running worker release it."""
        return {"schedule": self.schedule, "lease_until": self.lease_until}

    @classmethod
    def of_job(cls, job: Job) -> Claim | None:
        """Return the claim behind a batch job, or None for a job without one."""
        meta = job.meta or {}
        if "schedule" not in meta or "lease_until" not in meta or not job.args:
            return None
        members = tuple(str(member) for member in job.args[0])
        return cls(str(meta["schedule"]), str(meta["lease_until"]), members)


class RecentClaims:
    """Claims taken within the last lease; older ones have expired anyway."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self._claims: deque[tuple[float, Claim]] = deque()

    def add(self, claim: Claim) -> None:
        """Remember ``claim`` and forget those whose lease has run out."""
        now = time.monotonic()
        self._claims.append((now, claim))
        while self._claims and now - self._claims[0][0] > self.lease_s:
            self._claims.popleft()

    def all(self) -> list[Claim]:
        """Return the remembered claims, oldest first."""
        return [claim for _, claim in self._claims]


def release(connection: redis.Redis, claims: Iterable[Claim]) -> int:
    """Make due now every claimed member that no worker finished, and count them."""
    script = connection.register_script(lua.RELEASE)
    released = 0
    for claim in claims:
        if claim.members:
            reply = script(
                keys=[claim.schedule], args=[claim.lease_until, *claim.members]
            )
            released += int(reply)
    return released
