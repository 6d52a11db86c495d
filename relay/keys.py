"""Every Redis key the relay uses, built in one place under a prefix.

| key                         | type   | contains                                   |
| --------------------------- | ------ | ------------------------------------------ |
| schema                      | string | keyspace version applied by `relay migrate` |
| reg:{id}                    | hash   | one registration                           |
| idx:dedupe:{digest}         | string | registration ID for (job ID, callback URL) |
| tracker:{cred}:{job}        | hash   | one upstream job as polled, and the        |
|                             |        | registrations it serves as fields r:{ID}   |
| schedule:poll               | zset   | tracker ID -> next due time (Redis clock)  |
| event:{id}                  | hash   | one webhook to one callback                |
| schedule:deliver            | zset   | event ID -> next attempt due time          |
| attempts:{event}            | list   | newest delivery attempts first, capped     |
| ratelimit:{cred}            | hash   | token bucket of one ModelGates key         |
| pause:{cred}                | string | set while a 429 pauses that key (PX TTL)   |
| stats:{name}                | hash   | fleet-wide counters for /metrics           |
| idx:exhausted               | set    | IDs of events whose retries ran out        |
| idx:regs:{tenant}           | zset   | a tenant's registrations, ordered by time  |
| tenants                     | set    | names of the tenants that exist            |
| tenant:{name}               | hash   | a tenant's sealed secrets and counters     |
| apikey:{key id}             | hash   | an API key's tenant and SHA-256 digest     |
| apikeys                     | set    | IDs of every API key, revoked ones too     |
| cred:{cred}                 | string | a tenant's ModelGates key, sealed          |
| idem:{tenant}:{digest}      | string | the first answer to an Idempotency-Key     |
| ratelimit:apikey:{key id}   | hash   | registration token bucket of one API key   |
| lock:sweep                  | string | held by the worker sweeping the indexes    |
| workers                     | zset   | worker name -> last heartbeat (Redis clock) |

A tracker ID is ``{cred}:{job}``: ``cred`` is a short digest of the ModelGates
key, so the key itself is never stored, and two registrations of one job under
one key share a tracker. RQ names its own keys: the waiting jobs of the two
queues are in ``rq:queue:{prefix}poll`` and ``rq:queue:{prefix}deliver``.

``idx:regs:{tenant}`` holds every score at 0 and members that read
``{created ms, 13 digits}:{registration ID}``, so the lexicographic order is
the creation order and a member doubles as a pagination cursor.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

SCHEMA_VERSION = 2
ATTEMPTS_KEPT = 50
# RQ keeps the IDs of a queue's waiting jobs in the list ``rq:queue:<name>``
# (``rq.Queue.redis_queue_namespace_prefix`` in RQ 3.0).
RQ_QUEUE_KEY_PREFIX = "rq:queue:"
# Workers write a heartbeat this often, and /metrics counts a worker as alive
# for WORKER_ALIVE_S after its last one, so a few missed beats are tolerated.
WORKER_HEARTBEAT_INTERVAL_S = 5.0
WORKER_ALIVE_S = 20.0
# Heartbeats of workers that stopped without removing theirs are dropped
# after this long.
WORKER_HEARTBEAT_KEPT_S = 3600


def credential_id(api_key: str) -> str:
    """Return a stable, non-reversible name for a ModelGates key."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def dedupe_digest(tenant: str, job_id: str, callback_url: str) -> str:
    """Return the digest that makes registrations idempotent.

    128 bits of SHA-256 in base64url: short enough that Redis keeps the
    registration hash in its compact encoding, far from any collision.
    """
    material = "\0".join((tenant, job_id, callback_url)).encode()
    digest = hashlib.sha256(material).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass(frozen=True)
class Keys:
    """Builds the relay's Redis keys under one prefix."""

    prefix: str = "relay:"

    @property
    def schema(self) -> str:
        return f"{self.prefix}schema"

    @property
    def poll_queue(self) -> str:
        """Name of the RQ queue of poll batches (RQ adds its own ``rq:`` prefix)."""
        return f"{self.prefix}poll"

    @property
    def deliver_queue(self) -> str:
        """Name of the RQ queue of delivery batches."""
        return f"{self.prefix}deliver"

    @property
    def poll_queue_key(self) -> str:
        """Redis list of the poll queue's waiting job IDs."""
        return f"{RQ_QUEUE_KEY_PREFIX}{self.poll_queue}"

    @property
    def deliver_queue_key(self) -> str:
        """Redis list of the deliver queue's waiting job IDs."""
        return f"{RQ_QUEUE_KEY_PREFIX}{self.deliver_queue}"

    @property
    def poll_schedule(self) -> str:
        return f"{self.prefix}schedule:poll"

    @property
    def deliver_schedule(self) -> str:
        return f"{self.prefix}schedule:deliver"

    @property
    def exhausted(self) -> str:
        return f"{self.prefix}idx:exhausted"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    def registration(self, registration_id: str) -> str:
        return f"{self.prefix}reg:{registration_id}"

    def dedupe(self, digest: str) -> str:
        return f"{self.prefix}idx:dedupe:{digest}"

    def tracker(self, tracker_id: str) -> str:
        return f"{self.prefix}tracker:{tracker_id}"

    def event(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}"

    def attempts(self, event_id: str) -> str:
        return f"{self.prefix}attempts:{event_id}"

    def rate_limit(self, cred: str) -> str:
        return f"{self.prefix}ratelimit:{cred}"

    def pause(self, cred: str) -> str:
        return f"{self.prefix}pause:{cred}"

    def stats(self, name: str) -> str:
        return f"{self.prefix}stats:{name}"

    def tenant_registrations(self, tenant: str) -> str:
        return f"{self.prefix}idx:regs:{tenant}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    def tenant(self, name: str) -> str:
        return f"{self.prefix}tenant:{name}"

    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}apikey:{key_id}"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}apikeys"

    def credential(self, cred: str) -> str:
        return f"{self.prefix}cred:{cred}"

    def idempotency(self, tenant: str, digest: str) -> str:
        return f"{self.prefix}idem:{tenant}:{digest}"

    def key_rate_limit(self, key_id: str) -> str:
        return f"{self.prefix}ratelimit:apikey:{key_id}"

    @property
    def sweep_lock(self) -> str:
        """Held by the one worker that sweeps the indexes this round."""
        return f"{self.prefix}lock:sweep"

    def tracker_id(self, cred: str, job_id: str) -> str:
        """Return the schedule member that names one upstream job."""
        return f"{cred}:{job_id}"
