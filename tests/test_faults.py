"""Faults on a real cluster: each run still ends with every image stored exactly once.

Workers are real ``catdog worker`` processes on a private Redis (so crashing it harms no
other test) and the shared PostgreSQL, reached through a proxy where the test cuts it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import make_image
from runs import count_predictions, scan_held, scan_with_broker, settings_for, wait_for_run
from services import RedisServer, TcpProxy

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _photos(root: Path, n: int) -> Path:
    for i in range(n):
        make_image(root / f"p{i:03d}.png", "dog" if i % 2 else "cat", size=(24, 20), seed=i)
    return root


def _wait_until(check: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(
    fault_workers, fault_env, own_redis: RedisServer, tmp_path: Path
):
    """SIGKILL between storing a batch and acknowledging it: the batch is redelivered to
    another worker after the visibility timeout and its results stay single."""
    root = _photos(tmp_path / "photos", 16)
    victim = fault_workers(CATDOG_BATCH_DELAY_S="1.5")
    summary = scan_with_broker(fault_env, root)
    db = fault_env["CATDOG_DATABASE_URL"]
    broker = own_redis.client()
    # Two batches stored and the victim still holding the second one: it sits in the
    # pause after the upsert and before the ack, the window where a kill causes a re-run.
    _wait_until(
        lambda: count_predictions(db) >= 8 and broker.hlen("unacked") == 1,
        what="the victim to store a second batch",
    )
    victim.stop(signal.SIGKILL)
    assert broker.hlen("unacked") == 1  # the broker still owes that batch to someone

    fault_workers()
    count = wait_for_run(db, summary.run_id, timeout=90)
    assert count.exactly_once, count
    assert (count.labeled, count.failed) == (16, 0)
    # The run is finished once the last upsert commits; its ack follows the test's delay.
    _wait_until(
        lambda: broker.hlen("unacked") == 0 and broker.llen("inference") == 0,
        what="the last batch to be acknowledged",
    )


def test_a_redis_restart_during_a_scan_loses_nothing(
    fault_workers, fault_env, own_redis: RedisServer, tmp_path: Path
):
    """Redis crashes and comes back while the producer is still queueing: producer and
    worker reconnect and the run completes."""
    root = _photos(tmp_path / "photos", 40)
    fault_workers(CATDOG_BATCH_DELAY_S="0.2")
    result: dict[str, object] = {}
    # A high-water mark of 1 keeps the producer sending for as long as the worker works.
    scanner = threading.Thread(
        target=lambda: result.update(s=scan_with_broker(fault_env, root, queue_high_water=1))
    )
    scanner.start()
    db = fault_env["CATDOG_DATABASE_URL"]
    _wait_until(lambda: count_predictions(db) >= 4, what="the first batch")
    assert scanner.is_alive(), "the restart must hit the producer while it still sends"
    own_redis.restart(down_s=1.0)
    scanner.join(timeout=120)
    assert not scanner.is_alive(), "the producer did not finish after the restart"
    count = wait_for_run(db, result["s"].run_id, timeout=120)  # type: ignore[attr-defined]
    assert count.exactly_once, count
    assert count.labeled == 40


def test_the_producer_waits_out_a_broker_outage(fault_env, own_redis: RedisServer):
    """With Redis down, reading the queue length and sending a batch both wait for it to come
    back instead of failing the scan."""
    from catdog.broker import make_celery
    from catdog.producer.queue import BrokerQueue

    app = make_celery(settings_for(fault_env))
    queue = BrokerQueue(app, "store")
    own_redis.kill()
    done: list[int] = []

    def produce() -> None:
        done.append(queue.depth())
        queue.send(1, [1, 2, 3])
        done.append(queue.depth())

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(1.5)
    assert producer.is_alive() and done == []
    own_redis.start()
    producer.join(timeout=30)
    app.close()
    assert done == [0, 1]


def test_a_database_outage_delays_the_run_without_losing_results(
    fault_workers, fault_env, tmp_path: Path
):
    """Workers lose PostgreSQL for a few seconds: batches retry with backoff and the run
    completes when it is back."""
    root = _photos(tmp_path / "photos", 24)
    db = fault_env["CATDOG_DATABASE_URL"]
    proxy = TcpProxy(5432)
    try:
        fault_workers(
            CATDOG_DATABASE_URL=db.replace(":5432/", f":{proxy.port}/"),
            CATDOG_BATCH_DELAY_S="0.2",
        )
        summary = scan_with_broker(fault_env, root)
        _wait_until(lambda: count_predictions(db) >= 4, what="the first batch")
        proxy.cut()
        time.sleep(6)
        assert count_predictions(db) < 24  # the outage did hit the run
        proxy.mend()
        count = wait_for_run(db, summary.run_id, timeout=90)
    finally:
        proxy.close()
    assert count.exactly_once, count
    assert count.labeled == 24


def test_sigterm_lets_the_worker_finish_its_batch_and_leave(
    fault_workers, fault_env, own_redis: RedisServer, tmp_path: Path
):
    """A warm shutdown finishes the batch in hand and acknowledges it: nothing of it is left
    for the visibility timeout, and another worker completes the run."""
    root = _photos(tmp_path / "photos", 12)
    worker = fault_workers(CATDOG_BATCH_DELAY_S="1.0")
    summary = scan_with_broker(fault_env, root)
    db = fault_env["CATDOG_DATABASE_URL"]
    broker = own_redis.client()
    _wait_until(lambda: broker.hlen("unacked") == 1, what="the worker to be inside a batch")
    (in_hand,) = broker.hkeys("unacked")
    # The next worker loads its model while this one shuts down.
    fault_workers(wait=False)
    worker.stop(signal.SIGTERM, timeout=30)
    assert worker.proc.returncode == 0
    assert not broker.hexists("unacked", in_hand)  # acknowledged, not abandoned
    assert count_predictions(db) % 4 == 0  # whole batches only

    count = wait_for_run(db, summary.run_id, timeout=60)
    assert count.exactly_once, count


def test_a_batch_that_always_fails_ends_as_recorded_failures(
    fault_workers, fault_env, tmp_path: Path
):
    """A model whose outputs do not match its classes fails every batch: after the bounded
    retries each image is stored as failed with the reason, and the run finishes."""
    from helpers import build_tiny_model

    bad = build_tiny_model(tmp_path / "bad" / "model.keras")
    meta = bad.with_suffix(".json")
    meta.write_text(meta.read_text().replace('["cat", "dog"]', '["cat", "dog", "fox"]'))
    root = _photos(tmp_path / "photos", 8)
    env = {**fault_env, "CATDOG_MODEL": str(bad)}
    fault_workers(CATDOG_MODEL=str(bad), CATDOG_MAX_RETRIES="2")
    summary = scan_with_broker(env, root)
    count = wait_for_run(env["CATDOG_DATABASE_URL"], summary.run_id, timeout=90)
    assert count.exactly_once, count
    assert count.failed == 8
    assert all(e.startswith("gave up after 3 attempts: ValueError:") for e in count.errors)
    assert all("outputs" in e for e in count.errors)


def test_a_batch_that_keeps_killing_its_worker_ends_as_recorded_failures(
    env, fault_env, own_redis: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A batch whose earlier starts all died with their worker is not run again: its images
    are stored as failed and the message is acknowledged.

    The task runs in this process (no model is needed to give up); Redis holds the count of
    starts that never finished, as it would after three workers were killed by the batch.
    """
    from catdog.workers import tasks

    env(
        broker_url=own_redis.url(),
        database_url=fault_env["CATDOG_DATABASE_URL"],
        model=fault_env["CATDOG_MODEL"],
        max_retries="2",
    )
    monkeypatch.setattr(tasks, "_context", None)
    monkeypatch.setattr(tasks, "_starts", None)
    sent: list[tuple[int, list[int]]] = []
    summary = scan_held(fault_env, _photos(tmp_path / "photos", 4), sent)
    own_redis.client().set("catdog:starts:poison-1", 3)
    try:
        result = tasks.classify_batch_task.apply(args=list(sent[0]), task_id="poison-1").get()
    finally:
        tasks._close_context()
    assert result["failed"] == 4 and "stopped its worker 3 times" in result["gave_up"]
    count = wait_for_run(fault_env["CATDOG_DATABASE_URL"], summary.run_id, timeout=5)
    assert count.exactly_once, count
    assert all("stopped its worker 3 times" in e for e in count.errors)
    assert own_redis.client().exists("catdog:starts:poison-1") == 0
