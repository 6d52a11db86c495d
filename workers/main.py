"""``relay worker``: an RQ worker for the relay's queues plus its dispatcher."""

from __future__ import annotations

import redis
import structlog
from rq import Queue, SimpleWorker

import migrations
from relay.keys import Keys
from relay.settings import Settings
from workers.dispatcher import Dispatcher
from workers.runtime import Runtime, close_runtime, install_runtime

log = structlog.get_logger(__name__)


def run_worker(settings: Settings, burst: bool = False) -> None:
    """Run until SIGTERM or SIGINT; RQ finishes the current batch first."""
    settings.require_worker()
    connection = redis.Redis.from_url(
        settings.redis_url, socket_timeout=30, socket_connect_timeout=5
    )
    keys = Keys(settings.key_prefix)
    migrations.check(connection, keys)

    install_runtime(Runtime(settings))
    dispatcher = Dispatcher(settings, connection)
    dispatcher.start()
    # SimpleWorker runs jobs in this process: a batch is cheap, a fork per
    # batch is not, and the shared clients live in this process.
    queues = [
        Queue(keys.deliver_queue, connection=connection),
        Queue(keys.poll_queue, connection=connection),
    ]
    worker = SimpleWorker(queues, connection=connection)
    log.info("worker.started", name=worker.name, queues=[q.name for q in queues])
    try:
        # RQ logs several INFO lines per job; the relay logs one per batch.
        rq_level = "DEBUG" if settings.log_level == "DEBUG" else "WARNING"
        worker.work(burst=burst, logging_level=rq_level)
    finally:
        dispatcher.stop()
        dispatcher.join(timeout=5)
        close_runtime()
        log.info("worker.stopped", name=worker.name)
