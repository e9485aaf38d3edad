"""Celery tasks: thin shells over the plain functions in :mod:`workers.inference`.

The shell adds what only a queue needs: a check of the message, a lease that keeps a running
batch from being redelivered, retries with backoff while the database is away, and an end
for batches that fail every time (:mod:`workers.poison`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import task_received, worker_ready, worker_shutdown
from sqlalchemy.exc import DBAPIError, OperationalError

from catdog.broker import CLASSIFY_TASK, redis_client
from catdog.messages import classify_args_problem
from catdog.settings import get_settings
from catdog.workers.app import app
from catdog.workers.health import Heartbeat
from catdog.workers.inference import InferenceContext, classify_batch
from catdog.workers.lease import Lease
from catdog.workers.metrics import observe_batch
from catdog.workers.poison import StartCounter, record_failures

log = logging.getLogger(__name__)

#: Seconds of the first retry when the database is down; doubles up to the cap.
DB_RETRY_BASE_S = 2
#: Longest wait between two retries of a batch while the database is down.
DB_RETRY_CAP_S = 60
#: Retries while the database is away before the batch is dropped with an error: a day at
#: the cap. Results cannot be stored without the database, so this is deliberately long.
DB_RETRY_MAX = 1440
#: Seconds before the first retry of a batch that raised; doubles with each attempt.
ERROR_RETRY_BASE_S = 1

_context: InferenceContext | None = None
_starts: StartCounter | None = None
_heartbeat: Heartbeat | None = None
#: Delivery tag of each received task id: the lease needs it, the task request lacks it.
_delivery_tags: dict[str, str] = {}


def context() -> InferenceContext:
    """This process's inference context, built on first use and kept for its lifetime."""
    global _context
    if _context is None:
        _context = InferenceContext.create(get_settings())
    return _context


def starts() -> StartCounter:
    """This process's counter of unfinished batch starts (on the broker's Redis)."""
    global _starts
    if _starts is None:
        _starts = StartCounter(redis_client(get_settings()))
    return _starts


@worker_ready.connect
def _warn_about_open_roots(**_: Any) -> None:
    if not get_settings().store_roots:
        log.warning(
            "CATDOG_STORE_ROOTS is not set: this worker reads any folder a scan registered; "
            "set it to the image stores to confine reads"
        )


@worker_ready.connect
def _load_model_at_start(**_: object) -> None:
    """Load the model when an inference worker starts, not on its first batch (arq's startup)."""
    if "inference" not in os.environ.get("CATDOG_WORKER_QUEUES", "inference"):
        return
    ctx = context()
    try:
        with ctx.sessions.begin() as session:
            ctx.current_model(session)
    except Exception:  # noqa: BLE001 - the first batch will report it again, with context
        log.exception("could not load the model at start-up")


@worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Beat once before the worker says ready, then on a thread a busy worker still runs."""
    global _heartbeat
    node = str(getattr(sender, "hostname", None) or "worker")
    queues = os.environ.get("CATDOG_WORKER_QUEUES", "inference").split(",")
    _heartbeat = Heartbeat(get_settings(), node, queues)
    _heartbeat.start()


@task_received.connect
def _remember_delivery_tag(request: Any = None, **_: Any) -> None:
    tag = getattr(getattr(request, "message", None), "delivery_tag", None)
    if request is not None and tag is not None:
        _delivery_tags[request.id] = str(tag)


@worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


@worker_shutdown.connect
def _close_context(**_: Any) -> None:
    global _context
    if _context is not None:
        _context.close()
        _context = None


def checked_ids(run_id: object, image_ids: object) -> list[int]:
    """The batch's image ids, or Reject (acknowledged, logged, never retried) if malformed.

    The worker's strategy already refused such messages (:mod:`catdog.messages`); this
    covers a task called some other way (``apply``, a test, another strategy).
    """
    problem = classify_args_problem([run_id, image_ids], {})
    if problem is not None:
        raise Reject(f"malformed batch message: {problem}", requeue=False)
    assert isinstance(image_ids, list)
    return image_ids


def _lease(tag: str | None) -> Any:
    """Refresh this delivery's visibility while the batch runs (no-op without Redis)."""
    client = starts().client
    if tag is None or client is None:
        return nullcontext()
    return Lease(client, tag, every=max(1.0, get_settings().visibility_timeout / 3))


@contextmanager
def _delayed() -> Iterator[None]:
    # CATDOG_BATCH_DELAY_S: fault tests need batches slow enough to be hit in flight.
    delay = get_settings().batch_delay_s
    if delay:
        time.sleep(delay)
    yield
    if delay:
        time.sleep(delay)


def _backoff(base: float, retries: int) -> float:
    """A random delay in [base / 2, doubling ceiling], the ceiling capped.

    The jitter spreads the retries of many workers that failed together (a database restart)
    instead of sending them back in lockstep. A delayed retry is held unacknowledged by a
    worker: keep it under the visibility timeout, or the broker would hand out copies.
    """
    cap = min(DB_RETRY_CAP_S, max(1, get_settings().visibility_timeout // 2))
    ceiling = min(base * 2**retries, cap)
    return random.uniform(min(base, ceiling) / 2, ceiling)


def _is_outage(exc: DBAPIError) -> bool:
    """True for a database that is away (retry later), false for a bad statement."""
    return isinstance(exc, OperationalError) or exc.connection_invalidated


@app.task(name=CLASSIFY_TASK, bind=True, max_retries=None)
def classify_batch_task(self: Task, run_id: int | None, image_ids: list[int]) -> dict[str, Any]:
    """Label a batch of registered images and store the results."""
    task_id = self.request.id
    tag = _delivery_tags.pop(task_id, None)
    ids = checked_ids(run_id, image_ids)
    started = starts().started(task_id)
    # Past the limit, the previous starts never finished: this batch takes its worker down.
    crashed = started > get_settings().max_retries + 1
    try:
        if crashed:
            reason = f"gave up: the batch stopped its worker {started - 1} times (crash or kill)"
            done, failed = record_failures(context(), run_id, ids, reason)
            result = {"done": done, "failed": failed, "images": len(ids), "gave_up": reason}
        else:
            with _lease(tag), _delayed():
                batch = classify_batch(context(), run_id, ids)
            observe_batch(batch.images, batch.seconds, self.request.hostname)
            result = batch.as_dict()
    except DBAPIError as exc:
        if not crashed:
            starts().finished(task_id)
        retries = self.request.retries
        if not _is_outage(exc) or retries >= DB_RETRY_MAX:
            return _give_up_or_retry(self, run_id, ids, exc)
        # The database is away: keep the batch and try again later rather than drop results.
        delay = _backoff(DB_RETRY_BASE_S, retries)
        log.warning(
            "database unavailable (%s); retrying batch in %ss", exc.__class__.__name__, delay
        )
        raise self.retry(exc=exc, countdown=delay, max_retries=None) from None
    except Exception as exc:  # noqa: BLE001 - any failure: retry a few times, then record
        starts().finished(task_id)
        return _give_up_or_retry(self, run_id, ids, exc)
    starts().finished(task_id)
    return result


def _give_up_or_retry(
    task: Task, run_id: int | None, ids: list[int], exc: Exception
) -> dict[str, Any]:
    """Retry a failing batch with backoff; past ``max_retries`` store its images as failed."""
    attempts = task.request.retries + 1
    limit = get_settings().max_retries
    if attempts <= limit:
        log.warning(
            "batch failed (%s: %s); retry %d of %d", type(exc).__name__, exc, attempts, limit
        )
        delay = _backoff(ERROR_RETRY_BASE_S, attempts - 1)
        raise task.retry(exc=exc, countdown=delay, max_retries=None)
    log.error("batch failed %d times", attempts, exc_info=exc)
    reason = f"gave up after {attempts} attempts: {type(exc).__name__}: {exc}"
    done, failed = record_failures(context(), run_id, ids, reason[:1000])
    return {"done": done, "failed": failed, "images": len(ids), "gave_up": reason[:1000]}
