"""The Celery application: JSON only, late acks, one batch at a time per worker.

Importing this module never imports TensorFlow; the inference and training tasks load it
lazily inside the worker process (TensorFlow is not fork-safe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from catdog.settings import Settings, get_settings

if TYPE_CHECKING:
    from redis import Redis

#: Queue of batch inference tasks (GPU workers).
INFERENCE_QUEUE = "inference"
#: Queue of training jobs (one training worker, one job at a time).
TRAINING_QUEUE = "training"
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
        include=["catdog.workers.tasks", "catdog.training.tasks"],
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
            "catdog.classify_batch": {"queue": INFERENCE_QUEUE},
            "catdog.train": {"queue": TRAINING_QUEUE},
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


app = make_celery(get_settings())


def broker_redis(settings: Settings) -> Redis | None:
    """A plain Redis client on the broker (TLS included), or None for other brokers."""
    url = settings.broker()
    if url is None or not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    ssl = settings.redis_ssl() if url.startswith("rediss://") else {}
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10, **ssl)
