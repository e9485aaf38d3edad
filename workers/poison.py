"""Batches that fail every time: count their attempts and end them as recorded failures.

Two kinds of poison. A batch whose task raises is retried by Celery and counted by it; a
batch that takes its worker down (out of memory, a crashing decoder, a kill) is redelivered
by the broker and never reaches an ``except``, so its starts are counted in Redis, where the
count survives the worker. Either way, past the limit every image of the batch is stored as
failed with the reason, and the message is acknowledged: a recorded failure, not a loop.

Written here rather than taken from Celery: Celery counts retries of a task that raised, but
has no count of deliveries that killed their worker (``task_reject_on_worker_lost`` just
redelivers), which is the poison that matters for decoders.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis import Redis, RedisError
from sqlalchemy import select

from catdog.db import registry
from catdog.db.models import ScanRun
from catdog.db.queries import Outcome, image_locations, save_outcomes
from catdog.workers.inference import InferenceContext

log = logging.getLogger(__name__)

#: Redis key counting the unfinished starts of one task id.
STARTS_KEY = "catdog:starts:{}"
#: Seconds a start count is kept: longer than any batch waits in a queue.
STARTS_TTL_S = 7 * 24 * 3600


class StartCounter:
    """Counts the starts of each batch that did not finish, across worker deaths."""

    def __init__(self, client: Redis | None) -> None:
        self.client = client

    def started(self, task_id: str) -> int:
        """Count one more start; return how many starts this batch has had (1 the first time)."""
        if self.client is None:
            return 1
        key = STARTS_KEY.format(task_id)
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, STARTS_TTL_S)
            count, _ = pipe.execute()
            return int(count)
        except RedisError as exc:
            # Counting is a safety net; a broker hiccup must not stop the work itself.
            log.warning("cannot count starts of %s: %s", task_id, exc)
            return 1

    def finished(self, task_id: str) -> None:
        """The batch ended without killing its worker (done, retried or given up)."""
        if self.client is None:
            return
        try:
            self.client.delete(STARTS_KEY.format(task_id))
        except RedisError as exc:
            log.warning("cannot clear start count of %s: %s", task_id, exc)


def record_failures(
    ctx: InferenceContext, run_id: int | None, image_ids: Sequence[int], reason: str
) -> tuple[int, int]:
    """Store every image of the batch as failed with ``reason``; return (done, failed).

    The model version is the run's (the one the scan pinned), so no model is loaded: a model
    that cannot load is one of the things that ends here.
    """
    with ctx.sessions.begin() as session:
        version_id = None
        if run_id is not None:
            version_id = session.scalar(
                select(ScanRun.model_version_id).where(ScanRun.id == run_id)
            )
        if version_id is None:
            version_id = registry.current_version(session, ctx.settings).id
        where = image_locations(session, image_ids)
        outcomes = [Outcome(image_id=i, error=reason) for i in image_ids if i in where]
        done, failed = save_outcomes(session, run_id, version_id, outcomes)
    log.error("batch run=%s: %d images recorded as failed: %s", run_id, len(outcomes), reason)
    return done, failed
