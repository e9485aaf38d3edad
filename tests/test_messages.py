"""Any body, any header, any size: a bad message is dropped and the worker goes on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kombu import Connection

from catdog.messages import MAX_ID, MAX_MESSAGE_BYTES, message_problem
from runs import label_cats_through
from services import RedisServer

JSON = "application/json"


def _publish_raw(url: str, body: bytes | str, content_type: str = JSON, **headers: object) -> str:
    """Put raw bytes on the inference queue as a classify message, as anyone could."""
    task_id = f"raw-{os.urandom(4).hex()}"
    headers = {"lang": "py", "task": "catdog.classify_batch", "id": task_id, **headers}
    with Connection(url) as conn:
        conn.Producer().publish(
            body.encode() if isinstance(body, str) else body,
            exchange="",
            routing_key="inference",
            headers=headers,
            content_type=content_type,
            content_encoding="utf-8",
        )
    return task_id


@pytest.mark.parametrize(
    ("body", "content_type", "why"),
    [
        ('"x"', JSON, "not [args, kwargs, options]"),
        ("42", JSON, "not [args, kwargs, options]"),
        ("null", JSON, "not [args, kwargs, options]"),
        ("[[1, [2]], {}, 7]", JSON, "not [args, kwargs, options]"),
        ("[[1, [2]], []]", JSON, "not [args, kwargs, options]"),
        ("{not json", JSON, "not valid JSON"),
        ("[[1, [2]], {}, {}]", "application/x-python-serialize", "not application/json"),
        ("[[1], {}, {}]", JSON, "two arguments"),
        ('[[1, [2]], {"x": 1}, {}]', JSON, "two arguments"),
        ('[["1", [2]], {}, {}]', JSON, "run id"),
        ("[[1, 2], {}, {}]", JSON, "not a list"),
        (f"[[1, [{MAX_ID + 1}]], {{}}, {{}}]", JSON, "64-bit"),
        ("[[1, [0]], {}, {}]", JSON, "64-bit"),
        ("[[1, [true]], {}, {}]", JSON, "64-bit"),
        ("[[1, [1.5]], {}, {}]", JSON, "64-bit"),
    ],
)
def test_a_message_that_is_not_a_batch_says_why(body: str, content_type: str, why: str) -> None:
    """Each malformed shape is named; none gets as far as Celery's unpacking."""
    problem = message_problem("catdog.classify_batch", body.encode(), content_type)
    assert problem is not None and why in problem


def test_a_good_batch_message_passes_and_an_oversized_one_is_refused_unread() -> None:
    """Size is checked on the raw bytes, before any decoding."""
    assert message_problem("catdog.classify_batch", b"[[1, [1, 2, 3]], {}, {}]", JSON) is None
    assert message_problem("catdog.classify_batch", b"[[null, [1]], {}, null]", JSON) is None
    huge = b"[" * (MAX_MESSAGE_BYTES + 1)  # would take long to fail as JSON: never parsed
    problem = message_problem("catdog.classify_batch", huge, JSON)
    assert problem is not None and "exceeds the limit" in problem


@pytest.mark.services
@pytest.mark.slow
def test_malformed_messages_never_stop_a_worker_nor_linger_in_redis(
    fault_workers, fault_env, own_redis: RedisServer, tmp_path: Path
) -> None:
    """Shapes that used to crash the worker are dropped with one line; the next batch runs."""
    worker = fault_workers()
    url = own_redis.url()
    refused = [
        _publish_raw(url, '"x"'),
        _publish_raw(url, "42"),
        _publish_raw(url, "null"),
        _publish_raw(url, '[[1, [2]], {}, "not a dict"]'),
        _publish_raw(url, "[[1, [2]], {}]"),
        _publish_raw(url, f"[[1, [{MAX_ID + 1}]], {{}}, {{}}]"),
        _publish_raw(url, b"[" * (MAX_MESSAGE_BYTES + 10)),
        _publish_raw(url, "[[1, [2]], {}, {}]", content_type="text/plain"),
    ]
    count = label_cats_through(fault_env, tmp_path / "photos", 3)

    assert count.exactly_once and count.labeled == 3, count
    assert worker.proc.poll() is None, "the worker exited"
    broker = own_redis.client()
    assert broker.llen("inference") == 0 and broker.hlen("unacked") == 0
    # Nothing of a refused message is kept: no result, no stored arguments.
    assert not [k for k in broker.keys("celery-task-meta-raw-*")]
    log = worker.log.read_text()
    assert all(f"refused message {task_id}" in log for task_id in refused), log[-3000:]
