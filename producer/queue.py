"""Sending batches to the broker and measuring the queue for backpressure."""

from __future__ import annotations

import logging
import time

from celery import Celery

from catdog.broker import CLASSIFY_TASK, INFERENCE_QUEUE, queue_depth

log = logging.getLogger(__name__)

#: Seconds between two attempts to read the queue length while the broker is away.
RECONNECT_PAUSE_S = 1.0


class BrokerQueue:
    """The inference queue seen from the producer: send batches, read its depth."""

    def __init__(self, app: Celery, store_label: str) -> None:
        self.app = app
        self.store_label = store_label

    def send(self, run_id: int, image_ids: list[int]) -> None:
        """Queue one batch task; Flower shows run, size and store instead of the id list."""
        self.app.send_task(
            CLASSIFY_TASK,
            args=[run_id, image_ids],
            queue=INFERENCE_QUEUE,
            argsrepr=f"run={run_id} images={len(image_ids)} store={self.store_label}",
            # A broker restart must not lose what was already sent.
            retry=True,
            retry_policy={"max_retries": None, "interval_start": 0.5, "interval_max": 5},
        )

    def depth(self) -> int:
        """Messages waiting in the inference queue (not counting ones being worked on).

        Waits out a broker restart: the connection can drop between connecting and asking.
        """
        errors = self.app.connection_for_write().connection_errors
        while True:
            try:
                return queue_depth(self.app, INFERENCE_QUEUE)
            except errors as exc:
                log.warning("broker unavailable (%s); retrying", type(exc).__name__)
            time.sleep(RECONNECT_PAUSE_S)
