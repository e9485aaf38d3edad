"""catdog's own Prometheus metrics: what Flower's task events cannot tell.

Flower's ``/metrics`` already counts task events and task runtimes per worker. This module
adds the pipeline's view: images labeled, failed and pending per scan run (``scan_runs``),
queue depth read straight from Redis, and per-worker batch latency and images per second,
which each worker records in a Redis hash after every batch (``observe_batch``). The text is
the Prometheus exposition format, written by hand so no client library is needed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from catdog.broker import INFERENCE_QUEUE, TRAINING_QUEUE, UNACKED_KEY
from catdog.db.models import ScanRun
from catdog.workers.metrics import WORKER_KEY_PREFIX

log = logging.getLogger(__name__)

#: Finished runs listed besides the unfinished ones; older runs would only add stale series.
RECENT_RUNS = 20
#: kombu's Redis transport keeps prioritised messages in ``<queue>\x06\x16<step>`` lists.
PRIORITY_SEP = "\x06\x16"
#: kombu's default priority steps (step 0 is the plain queue name).
PRIORITY_STEPS = (3, 6, 9)
#: Seconds to wait for Redis during a scrape; a slow broker must not hang Prometheus.
REDIS_TIMEOUT_S = 2.0
#: Default port of ``catdog metrics`` (Flower's is 5555).
DEFAULT_PORT = 9808
#: The exposition format's content type.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


class Exposition:
    """Metric families rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: str, doc: str, samples: Iterable[tuple[Labels, float]]
    ) -> None:
        """Add one family (``kind``: counter or gauge) with its samples."""
        self._lines.append(f"# HELP {name} {doc}")
        self._lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self._lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        """The whole exposition, newline-terminated."""
        return "\n".join(self._lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        (k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for k, v in labels.items()
    )
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def metrics_text(session: Session, broker_url: str | None) -> str:
    """Scan-run progress, queue depth and worker throughput as Prometheus text."""
    out = Exposition()
    _run_metrics(out, session)
    client = redis_client(broker_url) if _is_redis(broker_url) else None
    if client is not None:
        _broker_metrics(out, client)
    return out.text()


def _run_metrics(out: Exposition, session: Session) -> None:
    labeled_total, failed_total = session.execute(
        select(func.coalesce(func.sum(ScanRun.done), 0), func.coalesce(func.sum(ScanRun.failed), 0))
    ).one()
    recent = select(ScanRun.id).order_by(ScanRun.id.desc()).limit(RECENT_RUNS).scalar_subquery()
    runs = session.scalars(
        select(ScanRun)
        .where(or_(ScanRun.finished.is_(None), ScanRun.id.in_(recent)))
        .order_by(ScanRun.id)
    ).all()
    pending = {run.id: max(run.total - run.done - run.failed, 0) for run in runs}

    def per_run(value: Callable[[ScanRun], float]) -> list[tuple[Labels, float]]:
        return [({"run": str(run.id), "root": run.root}, value(run)) for run in runs]

    out.family(
        "catdog_images_labeled_total",
        "counter",
        "Images labeled by all scan runs (a relabeled image counts again).",
        [({}, int(labeled_total))],
    )
    out.family(
        "catdog_images_failed_total",
        "counter",
        "Images recorded as failed with a reason by all scan runs.",
        [({}, int(failed_total))],
    )
    out.family(
        "catdog_images_pending",
        "gauge",
        "Queued images still without a result, over unfinished runs.",
        [({}, sum(pending[run.id] for run in runs if run.finished is None))],
    )
    out.family(
        "catdog_run_images",
        "gauge",
        "Images a scan run queued for labeling.",
        per_run(lambda run: run.total),
    )
    out.family(
        "catdog_run_images_labeled",
        "gauge",
        "Images a scan run labeled.",
        per_run(lambda r: r.done),
    )
    out.family(
        "catdog_run_images_failed",
        "gauge",
        "Images a scan run recorded as failed.",
        per_run(lambda run: run.failed),
    )
    out.family(
        "catdog_run_images_pending",
        "gauge",
        "Images of a scan run still without a result.",
        per_run(lambda run: pending[run.id]),
    )
    out.family(
        "catdog_run_finished",
        "gauge",
        "1 once every image of the scan run has a result.",
        per_run(lambda run: int(run.finished is not None)),
    )


def _broker_metrics(out: Exposition, client: redis.Redis) -> None:
    try:
        depths = {queue: queue_depth(client, queue) for queue in (INFERENCE_QUEUE, TRAINING_QUEUE)}
        unacked = int(client.hlen(UNACKED_KEY))
        workers = worker_stats(client)
    except redis.RedisError as exc:
        log.warning("metrics: broker unreachable: %s", exc)
        out.family("catdog_broker_up", "gauge", "1 when Redis answered this scrape.", [({}, 0)])
        return
    out.family("catdog_broker_up", "gauge", "1 when Redis answered this scrape.", [({}, 1)])
    out.family(
        "catdog_queue_depth",
        "gauge",
        "Tasks waiting in a Celery queue (batches for inference).",
        [({"queue": queue}, depth) for queue, depth in depths.items()],
    )
    out.family(
        "catdog_queue_unacked",
        "gauge",
        "Tasks delivered to a worker and not yet acknowledged (in flight).",
        [({}, unacked)],
    )

    def per_worker(field: str) -> list[tuple[Labels, float]]:
        return [({"worker": name}, stats[field]) for name, stats in workers.items()]

    out.family(
        "catdog_worker_batches_total",
        "counter",
        "Batches a worker finished.",
        per_worker("batches"),
    )
    out.family(
        "catdog_worker_images_total", "counter", "Images a worker processed.", per_worker("images")
    )
    out.family(
        "catdog_worker_busy_seconds_total",
        "counter",
        "Seconds a worker spent processing batches.",
        per_worker("seconds"),
    )
    out.family(
        "catdog_worker_last_batch_seconds",
        "gauge",
        "Latency of a worker's most recent batch.",
        per_worker("last_batch_seconds"),
    )
    out.family(
        "catdog_worker_images_per_second",
        "gauge",
        "Throughput of a worker's most recent batch.",
        per_worker("images_per_second"),
    )
    out.family(
        "catdog_worker_last_batch_timestamp_seconds",
        "gauge",
        "Unix time a worker finished its most recent batch.",
        per_worker("last_batch_at"),
    )


def queue_depth(client: redis.Redis, queue: str) -> int:
    """Messages waiting in ``queue``, prioritised ones included."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    for step in PRIORITY_STEPS:
        pipe.llen(f"{queue}{PRIORITY_SEP}{step}")
    return sum(int(n) for n in pipe.execute())


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


def _is_redis(url: str | None) -> bool:
    return bool(url) and url.startswith(("redis://", "rediss://", "unix://"))  # type: ignore[union-attr]


@lru_cache(maxsize=4)
def redis_client(url: str) -> redis.Redis:
    """One connection pool per URL per process."""
    return redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def make_server(address: str, port: int, render: Callable[[], str]) -> ThreadingHTTPServer:
    """An HTTP server answering ``GET /metrics`` with ``render()``; port 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "try /metrics")
                return
            try:
                body = render().encode()
            except Exception:  # a scrape reports the failure; the server keeps serving
                log.exception("metrics: scrape failed")
                self.send_error(500, "scrape failed; see the catdog metrics log")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: " + format, *args)

    return ThreadingHTTPServer((address, port), Handler)
