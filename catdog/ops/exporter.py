"""catdog's own Prometheus metrics: what Flower's task events cannot tell.

Flower's ``/metrics`` already counts task events and task runtimes per worker. This module
adds the pipeline's view: images labeled, failed and pending per scan run (``scan_runs``),
queue depth and unacknowledged tasks on the broker, and per-worker batch latency and images
per second, which each worker records in a Redis hash after every batch
(:func:`catdog.workers.metrics.observe_batch`). ``prometheus_client`` writes the exposition
and serves it; :class:`CatdogCollector` reads the figures afresh on every scrape.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.simple_server import make_server as wsgi_server

import redis
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from catdog.broker import (
    INFERENCE_QUEUE,
    TRAINING_QUEUE,
    UNACKED_KEY,
    make_celery,
    queue_depth,
    redis_client,
)
from catdog.db.models import Prediction, ScanRun, utcnow
from catdog.db.runs import pending as pending_images
from catdog.settings import Settings
from catdog.workers.metrics import WORKER_KEY_PREFIX

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from celery import Celery

log = logging.getLogger(__name__)

#: Finished runs listed besides the unfinished ones; older runs would only add stale series.
RECENT_RUNS = 20
#: Seconds to wait for Redis during a scrape; a slow broker must not hang Prometheus.
REDIS_TIMEOUT_S = 2.0
#: Default port of ``catdog metrics`` (Flower's is 5555).
DEFAULT_PORT = 9808
#: The one path the HTTP server answers.
METRICS_PATH = "/metrics"
#: What a scrape catches from the broker: Redis errors, kombu's wrapped connection errors.
BROKER_ERRORS = (redis.RedisError, OperationalError, OSError)

Sessions = Callable[[], AbstractContextManager[Session]]


class CatdogCollector(Collector):
    """Scan-run figures from the database and queue and worker figures from the broker.

    Built once per exporter process: the broker's Celery app and Redis client are made here
    and reused by every scrape; a database session is opened per scrape.
    """

    def __init__(self, sessions: Sessions, settings: Settings | None = None) -> None:
        self._sessions = sessions
        # No Redis broker (embedded mode, or another transport): no broker figures at all.
        self._broker: tuple[redis.Redis, Celery] | None = None
        client = None if settings is None else redis_client(settings, REDIS_TIMEOUT_S)
        if settings is not None and client is not None:
            self._broker = (client, _scrape_app(settings))

    @property
    def client(self) -> redis.Redis | None:
        """The client that reads the broker's Redis (None without a Redis broker)."""
        return None if self._broker is None else self._broker[0]

    def collect(self) -> Iterator[Metric]:
        """Every family, read now (the registry calls this on each scrape)."""
        with self._sessions() as session:
            yield from run_families(session)
        if self._broker is not None:
            yield from broker_families(*self._broker)


def _scrape_app(settings: Settings) -> Celery:
    """The broker's app, failing fast: one connection attempt within the scrape timeout."""
    app = make_celery(settings)
    app.conf.broker_connection_timeout = REDIS_TIMEOUT_S
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "max_retries": 0,
        "socket_timeout": REDIS_TIMEOUT_S,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
    }
    return app


def make_registry(sessions: Sessions, settings: Settings | None = None) -> CollectorRegistry:
    """A registry of its own (not the global one) holding only catdog's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CatdogCollector(sessions, settings))
    return registry


def metrics_text(session: Session, settings: Settings | None = None) -> str:
    """The exposition of one scrape over ``session``; no broker figures without ``settings``."""
    registry = make_registry(lambda: nullcontext(session), settings)
    return generate_latest(registry).decode()


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    # The family strips a trailing _total from `name` and adds it back to the sample.
    return CounterMetricFamily(name, doc, labels=list(labels))


#: Gauges per scan run (labels ``run``, ``root``): name, help, value of (run, pending images).
PER_RUN: tuple[tuple[str, str, Callable[[ScanRun, int], float]], ...] = (
    ("catdog_run_images", "Images a scan run queued for labeling.", lambda r, _: r.total),
    ("catdog_run_images_labeled", "Images a scan run labeled.", lambda r, _: r.done),
    ("catdog_run_images_failed", "Images a scan run recorded as failed.", lambda r, _: r.failed),
    ("catdog_run_images_pending", "Images of a scan run still without a result.", lambda _, p: p),
    (
        "catdog_run_finished",
        "1 once every image of the scan run has a result.",
        lambda r, _: int(r.finished is not None),
    ),
)

#: Families per worker (label ``worker``): kind, name, help, field of :func:`worker_stats`.
PER_WORKER: tuple[
    tuple[Callable[..., CounterMetricFamily | GaugeMetricFamily], str, str, str], ...
] = (
    (_counter, "catdog_worker_batches_total", "Batches a worker finished.", "batches"),
    (_counter, "catdog_worker_images_total", "Images a worker processed.", "images"),
    (
        _counter,
        "catdog_worker_busy_seconds_total",
        "Seconds a worker spent processing batches.",
        "seconds",
    ),
    (
        _gauge,
        "catdog_worker_last_batch_seconds",
        "Latency of a worker's most recent batch.",
        "last_batch_seconds",
    ),
    (
        _gauge,
        "catdog_worker_images_per_second",
        "Throughput of a worker's most recent batch.",
        "images_per_second",
    ),
    (
        _gauge,
        "catdog_worker_last_batch_timestamp_seconds",
        "Unix time a worker finished its most recent batch.",
        "last_batch_at",
    ),
)


def run_families(session: Session) -> list[Metric]:
    """Images labeled, failed and pending, in total and per recent or unfinished scan run."""
    labeled_total = session.execute(select(func.coalesce(func.sum(ScanRun.done), 0))).scalar_one()
    recent = select(ScanRun.id).order_by(ScanRun.id.desc()).limit(RECENT_RUNS).scalar_subquery()
    runs = session.scalars(
        select(ScanRun)
        .where(
            or_(and_(ScanRun.finished.is_(None), ScanRun.ended.is_(None)), ScanRun.id.in_(recent))
        )
        .order_by(ScanRun.id)
    ).all()
    # Pending as `catdog status` shows it: a run that ended (its producer interrupted or gone)
    # waits for nothing; its unqueued images are counted by the scan that queues them.
    now = utcnow()
    pending = {run.id: pending_images(run, now) for run in runs}

    labeled = _counter(
        "catdog_images_labeled_total",
        "Images labeled by all scan runs (a relabeled image counts again).",
    )
    labeled.add_metric([], int(labeled_total))
    failed = _gauge(
        "catdog_images_failed",
        "Images whose latest result is a failure (a retried image counts once, and not at all "
        "once a retry labels it).",
    )
    failed.add_metric([], failed_images(session))
    pending_all = _gauge(
        "catdog_images_pending", "Queued images still without a result, over live runs."
    )
    pending_all.add_metric([], sum(pending.values()))

    families: list[Metric] = [labeled, failed, pending_all]
    for name, doc, value in PER_RUN:
        family = _gauge(name, doc, ["run", "root"])
        for run in runs:
            family.add_metric([str(run.id), run.root], value(run, pending[run.id]))
        families.append(family)
    return families


def failed_images(session: Session) -> int:
    """Images whose newest prediction (the one export and report show) is a failure.

    Not a sum over scan runs: ``scan --retry-failed`` queues the same files in a new run, so
    each retry would count them again.
    """
    newer = aliased(Prediction)
    has_newer = select(newer.id).where(
        newer.image_id == Prediction.image_id, newer.id > Prediction.id
    )
    return int(
        session.scalar(
            select(func.count())
            .select_from(Prediction)
            .where(Prediction.error.is_not(None), ~has_newer.exists())
        )
        or 0
    )


def broker_families(client: redis.Redis, app: Celery) -> list[Metric]:
    """Queue depth, unacknowledged tasks and worker throughput; ``catdog_broker_up 0`` when
    the broker does not answer (the rest of the scrape still stands)."""
    up = _gauge("catdog_broker_up", "1 when Redis answered this scrape.")
    try:
        depths = {queue: queue_depth(app, queue) for queue in (INFERENCE_QUEUE, TRAINING_QUEUE)}
        unacked = int(client.hlen(UNACKED_KEY))
        workers = worker_stats(client)
    except BROKER_ERRORS as exc:
        log.warning("metrics: broker unreachable: %s", exc)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    depth = _gauge(
        "catdog_queue_depth", "Tasks waiting in a Celery queue (batches for inference).", ["queue"]
    )
    for queue, n in depths.items():
        depth.add_metric([queue], n)
    in_flight = _gauge(
        "catdog_queue_unacked", "Tasks delivered to a worker and not yet acknowledged (in flight)."
    )
    in_flight.add_metric([], unacked)

    families: list[Metric] = [up, depth, in_flight]
    for make, name, doc, field in PER_WORKER:
        family = make(name, doc, ["worker"])
        for worker, stats in workers.items():
            family.add_metric([worker], stats[field])
        families.append(family)
    return families


def worker_stats(client: redis.Redis) -> dict[str, dict[str, float]]:
    """Each recording worker's counters, keyed by worker name."""
    keys = sorted(client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=100))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    stats: dict[str, dict[str, float]] = {}
    for key, raw in zip(keys, pipe.execute(), strict=True):
        if not raw:  # expired between SCAN and HGETALL
            continue
        fields = {_text(k): float(v) for k, v in raw.items()}
        seconds = fields.get("last_batch_seconds", 0.0)
        stats[_text(key)[len(WORKER_KEY_PREFIX) :]] = {
            "batches": int(fields.get("batches", 0)),
            "images": int(fields.get("images", 0)),
            "seconds": fields.get("seconds", 0.0),
            "last_batch_seconds": seconds,
            "images_per_second": fields.get("last_batch_images", 0.0) / seconds if seconds else 0.0,
            "last_batch_at": fields.get("last_batch_at", 0.0),
        }
    return stats


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def metrics_app(registry: CollectorRegistry) -> WSGIApplication:
    """A WSGI app answering ``GET /metrics`` from ``registry``; other paths are 404."""
    exposition = make_wsgi_app(registry)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"try /metrics\n"]
        try:
            return exposition(environ, start_response)
        except Exception:  # a scrape reports the failure; the server keeps serving
            log.exception("metrics: scrape failed")
            start_response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8")],
                sys.exc_info(),
            )
            return [b"scrape failed; see the catdog metrics log\n"]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape, so a slow database does not queue the next one."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: " + format, *args)


def make_server(address: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """An HTTP server for :func:`metrics_app`; port 0 picks a free one."""
    return wsgi_server(
        address,
        port,
        metrics_app(registry),
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )
