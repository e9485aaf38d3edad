"""What a task message may be, checked before Celery unpacks it: one bad message never
stops a worker.

Celery unpacks a task message's body (``args, kwargs, embed = body``) inside the worker's
execution path, where a body of the wrong shape raises past every handler and takes a solo
worker down; the message goes back to the queue and takes the next worker down too. This
strategy runs first, on the raw message: too large, not JSON, the wrong shape or arguments
out of range, and the message is acknowledged and dropped with one log line. It never runs
the task, so nothing about it (its arguments above all) is stored in the result backend.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.worker.strategy import default

log = logging.getLogger(__name__)

#: Task names: the contract between producers and workers (messages name them, not code).
CLASSIFY_TASK = "catdog.classify_batch"
TRAIN_TASK = "catdog.train"

#: Largest message body accepted, checked before it is decoded. A batch of the most ids a
#: message may carry (below) stays well under it.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Ids in one message above which it is refused (batches are a few hundred).
MAX_IDS_PER_MESSAGE = 100_000
#: Image and run ids are positive 64-bit integers (the database's BIGINT).
MAX_ID = 2**63 - 1

#: Checks a task's (args, kwargs); returns why they are unacceptable, or None.
ArgsCheck = Callable[[list[Any], dict[str, Any]], str | None]


class RefusedMessage(ValueError):
    """A message that cannot be a task of ours; the text says why, without its contents."""


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def classify_args_problem(args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """Why ``(run_id, image_ids)`` are not a batch, or None."""
    if kwargs or len(args) != 2:
        return "expected two arguments: run id and image ids"
    run_id, image_ids = args
    if run_id is not None and not _is_id(run_id):
        return "run id is not a positive 64-bit integer"
    if not isinstance(image_ids, list):
        return "image ids are not a list"
    if len(image_ids) > MAX_IDS_PER_MESSAGE:
        return f"{len(image_ids)} image ids in one batch (limit {MAX_IDS_PER_MESSAGE})"
    if not all(_is_id(i) for i in image_ids):
        return "image ids must be positive 64-bit integers"
    return None


#: Argument checks per task name; tasks without one get the shape check alone.
ARGS_CHECKS: dict[str, ArgsCheck] = {CLASSIFY_TASK: classify_args_problem}


def message_problem(task_name: str, body: bytes | str, content_type: str | None) -> str | None:
    """Why a raw message cannot be run as ``task_name``, or None when it can."""
    size = len(body)
    if size > MAX_MESSAGE_BYTES:
        return f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
    if content_type != "application/json":
        return f"content type {str(content_type)[:40]!r} is not application/json"
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "body is not valid JSON"
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
        and isinstance(decoded[2], dict | None)
    ):
        return "body is not [args, kwargs, options]"
    check = ARGS_CHECKS.get(task_name)
    return check(decoded[0], decoded[1]) if check is not None else None


def guarded(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's default strategy behind :func:`message_problem`."""
    handle = default(task, app, consumer, **kwargs)

    def on_message(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any
    ) -> Any:
        headers = message.headers if isinstance(message.headers, dict) else {}
        problem = (
            "protocol 1 message (catdog sends protocol 2)"
            if body is not None
            else message_problem(task.name, message.body, message.content_type)
        )
        if problem is None:
            return handle(message, body, ack, reject, callbacks, **kw)
        task_id = str(headers.get("id", "?"))[:64]
        log.error("refused message %s for %s: %s; dropped", task_id, task.name, problem)
        message.ack()
        return None

    return on_message


class GuardedTask(Task):  # type: ignore[misc]
    """Every catdog task: its messages pass :func:`message_problem` before they run."""

    Strategy = "catdog.messages:guarded"
