"""What a worker records about its own batches, for the metrics exporter to serve.

Each worker adds its finished batches to a Redis hash on the broker
(``catdog:metrics:worker:<hostname>``); ``catdog metrics`` (:mod:`catdog.ops.exporter`) reads
them all. Recording is best effort: a broker hiccup never fails a stored batch.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import redis

from catdog.broker import redis_client
from catdog.settings import get_settings

log = logging.getLogger(__name__)

#: Redis hash of one worker's batch counters: ``catdog:metrics:worker:<hostname>``.
WORKER_KEY_PREFIX = "catdog:metrics:worker:"
#: A worker's hash expires this long after its last batch, so departed workers drop out.
WORKER_TTL_S = 6 * 3600


def record_batch(client: redis.Redis, worker: str, n_images: int, seconds: float) -> None:
    """Add one finished batch to ``worker``'s counters in Redis."""
    key = WORKER_KEY_PREFIX + worker
    pipe = client.pipeline(transaction=True)
    pipe.hincrby(key, "batches", 1)
    pipe.hincrby(key, "images", n_images)
    pipe.hincrbyfloat(key, "seconds", seconds)
    pipe.hset(
        key,
        mapping={
            "last_batch_images": n_images,
            "last_batch_seconds": seconds,
            "last_batch_at": time.time(),
        },
    )
    pipe.expire(key, WORKER_TTL_S)
    pipe.execute()


def observe_batch(n_images: int, seconds: float, worker: str | None = None) -> None:
    """Record a finished batch of this worker process; never raises.

    A no-op without a Redis broker (embedded mode). Metrics are best effort: a broker hiccup
    here must not fail a batch whose results are already stored.
    """
    client = redis_client(get_settings())
    if client is None:
        return
    try:
        record_batch(client, worker or worker_name(), n_images, seconds)
    except redis.RedisError as exc:
        log.debug("metrics: batch not recorded: %s", exc)


def worker_name() -> str:
    """The Celery node name inside a task (``celery@host``), else host and process id."""
    from celery import current_task

    hostname = getattr(getattr(current_task, "request", None), "hostname", None)
    return hostname or f"{socket.gethostname()}-{os.getpid()}"
