"""The naive design as a baseline: one RQ job per poll, rescheduled with enqueue_in.

Each job GETs one job's status from the stub, stores the status in a Redis
hash, and schedules the next poll with ``Queue.enqueue_in``. RQ's scheduler
moves due jobs back to the queue about once a second.

``python -m bench.naive --worker fork|simple --queue NAME`` runs one RQ worker
with its scheduler (``with_scheduler=True``) on ``REDIS_URL`` until SIGTERM:
``fork`` is RQ's default ``Worker``, which forks a work horse per job, and
``simple`` is ``SimpleWorker``, which runs jobs in its own process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from collections.abc import Sequence
from datetime import timedelta

import httpx
import redis
from rq import Queue, SimpleWorker, Worker, get_current_job

NEXT_POLL_DELAY = timedelta(seconds=0.01)
AUTH = {"authorization": "Bearer bench-modelgates-key"}
SEED_CHUNK = 1000

# A module-level client, as naive code often has. main() imports this module
# before RQ forks, so each work horse of the forking worker inherits the
# built client (and skips building its SSL context) but with an empty pool:
# every poll there opens a new connection. SimpleWorker reuses connections.
HTTP = httpx.Client(timeout=10, follow_redirects=False, trust_env=False)


def poll_once(base_url: str, queue_name: str, job_id: str) -> None:
    """Poll one job, record its status, and schedule its next poll."""
    job = get_current_job()
    assert job is not None, "poll_once runs only inside an RQ job"
    connection = job.connection

    reply = HTTP.get(f"{base_url}/api/v1/videos/{job_id}", headers=AUTH)
    status = reply.json()["status"]
    connection.hset(
        f"naive:{job_id}",
        mapping={"status": status, "polled_at_ms": int(time.time() * 1000)},
    )
    queue = Queue(queue_name, connection=connection)
    queue.enqueue_in(
        NEXT_POLL_DELAY, poll_once, base_url, queue_name, job_id, result_ttl=0
    )


def seed(
    connection: redis.Redis, queue_name: str, base_url: str, job_ids: Sequence[str]
) -> None:
    """Enqueue the first poll of each job, in pipelined chunks."""
    queue = Queue(queue_name, connection=connection)
    for start in range(0, len(job_ids), SEED_CHUNK):
        chunk = job_ids[start : start + SEED_CHUNK]
        queue.enqueue_many(
            [
                Queue.prepare_data(
                    poll_once, args=(base_url, queue_name, job_id), result_ttl=0
                )
                for job_id in chunk
            ]
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("fork", "simple"), required=True)
    parser.add_argument("--queue", required=True, help="RQ queue name")
    args = parser.parse_args()
    # Load the job's module in the worker itself, so a work horse finds it
    # imported rather than importing it for every job.
    importlib.import_module("bench.naive")
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    worker_class = Worker if args.worker == "fork" else SimpleWorker
    worker = worker_class(
        [Queue(args.queue, connection=connection)], connection=connection
    )
    worker.work(with_scheduler=True, logging_level="WARNING")


if __name__ == "__main__":
    main()
