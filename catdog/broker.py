"""The broker seen by every part of catdog: queue and task names, the Celery app, Redis.

Producers, workers, the training worker and operator views all meet here; none of them
imports another to learn a queue name. Importing this module builds no app and never
imports TensorFlow.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from celery import Celery

from catdog.messages import CLASSIFY_TASK, TRAIN_TASK, GuardedTask
from catdog.settings import Settings

if TYPE_CHECKING:
    from redis import Redis

#: Queue of batch inference tasks (GPU workers).
INFERENCE_QUEUE = "inference"
#: Queue of training jobs (one training worker, one job at a time).
TRAINING_QUEUE = "training"
#: Modules a worker imports to register the tasks above (names, so nothing is imported here).
INFERENCE_TASKS_MODULE = "catdog.workers.tasks"
TRAINING_TASKS_MODULE = "catdog.training.tasks"
#: Broker URL schemes served by Redis.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
#: Seconds to wait for Redis on a direct call; a slow broker must not hang a caller.
REDIS_TIMEOUT_S = 10.0

# kombu's Redis transport keeps its bookkeeping under these names (kombu/transport/redis.py).
# They are not public API; every use of them in catdog goes through this module.
#: Sorted set of delivered, unacknowledged messages scored by delivery time
#: (``unacked_index_key``): the visibility lease refreshes a running batch's score here.
UNACKED_INDEX_KEY = "unacked_index"
#: Hash of delivered but not yet acknowledged messages (``unacked_key``).
UNACKED_KEY = "unacked"

#: Longest pause between two sweeps that put abandoned batches back in the queue. Kombu's
#: default (10 s x a throttle of 10) would add up to 100 s to every redelivery.
RESTORE_SWEEP_MAX_S = 10


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for ``settings`` (a broker URL must be set)."""
    broker = settings.broker() or "memory://"
    app = Celery(
        "catdog",
        broker=broker,
        backend=_backend_for(broker),
        include=[INFERENCE_TASKS_MODULE, TRAINING_TASKS_MODULE],
        # Every task's messages are checked before Celery unpacks them (catdog.messages).
        task_cls=GuardedTask,
    )
    app.conf.update(
        # Never pickle: a message is data, not code.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # At-least-once delivery: ack after the batch is stored; a killed worker's batch
        # goes back to the queue instead of being lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Every worker sweeps for batches whose worker died (unacked for longer than the
            # visibility timeout) at least this often, and once when it starts.
            "unacked_restore_interval": restore_sweep_s(settings.visibility_timeout),
            "unacked_restore_throttle": 1,
            # Reconnect instead of dying when Redis restarts.
            "retry_on_timeout": True,
            "socket_keepalive": True,
        },
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_routes={
            CLASSIFY_TASK: {"queue": INFERENCE_QUEUE},
            TRAIN_TASK: {"queue": TRAINING_QUEUE},
        },
        task_default_queue=INFERENCE_QUEUE,
        # Flower: task events on, started state visible.
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        result_extended=True,
        # TensorFlow is not fork-safe: the default pool is one process, no fork.
        worker_pool="solo",
        worker_hijack_root_logger=False,
    )
    if broker.startswith("rediss://"):
        # TLS: without these Celery refuses a rediss:// backend, and a CA file is how a
        # private certificate authority is trusted.
        app.conf.broker_use_ssl = settings.redis_ssl()
        app.conf.redis_backend_use_ssl = settings.redis_ssl()
    return app


def restore_sweep_s(visibility_timeout: int) -> int:
    """Seconds between sweeps for abandoned batches: a fraction of the visibility timeout."""
    return max(1, min(RESTORE_SWEEP_MAX_S, visibility_timeout // 4))


def _backend_for(broker: str) -> str | None:
    # The result backend carries task state (training progress for `retrain --wait`).
    if broker.startswith(("redis://", "rediss://")):
        return broker
    return None


def redis_client(settings: Settings, timeout_s: float = REDIS_TIMEOUT_S) -> Redis | None:
    """The broker's Redis as a plain client (TLS settings included), or None for other brokers.

    One pool per URL and timeout in a process: every part of catdog that talks to the broker's
    Redis directly (start counters, leases, metrics) gets its client here.
    """
    url = settings.broker()
    if url is None or not url.startswith(REDIS_SCHEMES):
        return None
    ssl = tuple(sorted(settings.redis_ssl().items())) if url.startswith("rediss://") else ()
    return _client(url, timeout_s, ssl)


@lru_cache(maxsize=8)
def _client(url: str, timeout_s: float, ssl: tuple[tuple[str, Any], ...]) -> Redis:
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **dict(ssl)
    )


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in ``queue`` (prioritised ones included), through kombu's public API.

    A passive declare asks the transport for the queue's size; on Redis, kombu adds up the
    queue's priority lists itself. A queue nobody declared yet holds nothing. Raises the
    transport's connection errors.
    """
    with app.connection_for_write() as conn:
        try:
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
        except conn.channel_errors:  # NOT_FOUND: no worker or producer declared it yet
            return 0
        return int(declared.message_count)
