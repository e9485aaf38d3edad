"""Celery tasks: thin shells over the plain functions in :mod:`workers.inference`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_shutdown
from sqlalchemy.exc import DBAPIError, OperationalError

from catdog.settings import get_settings
from workers.app import app
from workers.inference import InferenceContext, classify_batch

log = logging.getLogger(__name__)

#: Seconds of the first retry when the database is down; doubles up to the cap.
DB_RETRY_BASE_S = 2
#: Longest wait between two retries of a batch while the database is down.
DB_RETRY_CAP_S = 60

_context: InferenceContext | None = None


def context() -> InferenceContext:
    """This process's inference context, built on first use and kept for its lifetime."""
    global _context
    if _context is None:
        _context = InferenceContext.create(get_settings())
    return _context


@worker_shutdown.connect
def _close_context(**_: Any) -> None:
    global _context
    if _context is not None:
        _context.close()
        _context = None


@app.task(name="catdog.classify_batch", bind=True, max_retries=None)
def classify_batch_task(self: Task, run_id: int | None, image_ids: list[int]) -> dict[str, Any]:
    """Label a batch of registered images and store the results."""
    try:
        return classify_batch(context(), run_id, image_ids).as_dict()
    except (OperationalError, DBAPIError) as exc:
        if (
            isinstance(exc, DBAPIError)
            and not exc.connection_invalidated
            and not isinstance(exc, OperationalError)
        ):
            raise
        # The database is away: keep the batch and try again later rather than drop results.
        retries = self.request.retries
        if retries >= get_settings().max_retries * 4:
            raise
        delay = min(DB_RETRY_BASE_S * 2**retries, DB_RETRY_CAP_S)
        log.warning(
            "database unavailable (%s); retrying batch in %ss", exc.__class__.__name__, delay
        )
        raise self.retry(exc=exc, countdown=delay) from None
