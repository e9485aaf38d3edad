"""catdog's Prometheus metrics: scan runs from SQL, queues and worker batches from Redis."""

from __future__ import annotations

import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from catdog.db.models import Base, ScanRun
from catdog.ops import exporter
from catdog.workers import metrics

#: A Redis database of these tests' own, so flushing it disturbs no other suite.
METRICS_REDIS_DB = 13


@pytest.fixture
def broker() -> Iterator[str]:
    """The real Redis on this machine (database 13), flushed before and after."""
    url = f"{os.environ.get('CATDOG_TEST_REDIS', 'redis://127.0.0.1:6379')}/{METRICS_REDIS_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Redis is required in CI but unavailable: {exc}")
        pytest.skip(f"Redis unavailable: {exc}")
    yield url
    client.flushdb()
    client.close()
    exporter.redis_client.cache_clear()


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    """A SQLite database with three scan runs: finished, labeling and scanning."""
    engine = create_engine(sqlite_url)
    Base.metadata.create_all(engine)
    now = datetime.now(UTC)
    with Session(engine) as session:
        session.add_all(
            [
                ScanRun(root="/a", total=10, done=9, failed=1, enqueued=now, finished=now),
                ScanRun(root="/b", total=100, done=40, failed=2, enqueued=now),
                ScanRun(root='/c "quoted"', total=5),
            ]
        )
        session.commit()
        yield session
    engine.dispose()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition, found by name and exact labels."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    head = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(head + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {head} in:\n{text}")


def test_run_counters_and_pending_images_come_from_scan_runs(session: Session) -> None:
    """Labeled, failed and pending images are reported per run and in total."""
    text = exporter.metrics_text(session, None)
    assert sample(text, "catdog_images_labeled_total") == 49
    assert sample(text, "catdog_images_failed_total") == 3
    assert sample(text, "catdog_images_pending") == 58 + 5
    assert sample(text, "catdog_run_images_pending", run="2", root="/b") == 58
    assert sample(text, "catdog_run_finished", run="1", root="/a") == 1
    assert sample(text, "catdog_run_images", run="3", root='/c \\"quoted\\"') == 5
    assert "catdog_queue_depth" not in text  # embedded: no broker to ask


def test_queue_depth_counts_waiting_and_prioritised_messages(session: Session, broker: str) -> None:
    """Queue depth is the length of the queue's Redis lists, priority lists included."""
    client = redis.Redis.from_url(broker)
    client.rpush("inference", "m1", "m2", "m3")
    client.rpush(f"inference{exporter.PRIORITY_SEP}6", "m4")
    client.rpush("training", "t1")
    client.hset(exporter.UNACKED_KEY, "tag1", "m0")
    text = exporter.metrics_text(session, broker)
    assert sample(text, "catdog_broker_up") == 1
    assert sample(text, "catdog_queue_depth", queue="inference") == 4
    assert sample(text, "catdog_queue_depth", queue="training") == 1
    assert sample(text, "catdog_queue_unacked") == 1


def test_observed_batches_add_up_per_worker_with_an_expiry(
    session: Session, broker: str, env: Callable[..., None]
) -> None:
    """Each worker's batches, images, busy time and last-batch rate reach the exposition."""
    env(broker_url=broker)
    metrics.observe_batch(200, 4.0, worker="catdog-inference@gpu0")
    metrics.observe_batch(100, 1.0, worker="catdog-inference@gpu0")
    metrics.observe_batch(50, 5.0, worker="catdog-inference@gpu1")
    text = exporter.metrics_text(session, broker)
    gpu0 = {"worker": "catdog-inference@gpu0"}
    assert sample(text, "catdog_worker_batches_total", **gpu0) == 2
    assert sample(text, "catdog_worker_images_total", **gpu0) == 300
    assert sample(text, "catdog_worker_busy_seconds_total", **gpu0) == 5.0
    assert sample(text, "catdog_worker_last_batch_seconds", **gpu0) == 1.0
    assert sample(text, "catdog_worker_images_per_second", **gpu0) == 100.0
    assert sample(text, "catdog_worker_images_per_second", worker="catdog-inference@gpu1") == 10
    ttl = redis.Redis.from_url(broker).ttl(metrics.WORKER_KEY_PREFIX + "catdog-inference@gpu0")
    assert 0 < ttl <= metrics.WORKER_TTL_S


def test_an_unreachable_broker_is_reported_not_raised(
    session: Session, monkeypatch: pytest.MonkeyPatch, env: Callable[..., None]
) -> None:
    """With Redis down the scrape still answers, with catdog_broker_up 0."""
    monkeypatch.delenv("CATDOG_BROKER_URL", raising=False)
    env()
    metrics.observe_batch(1, 1.0, worker="nobody")  # embedded: a silent no-op
    text = exporter.metrics_text(session, "redis://127.0.0.1:1/0")
    assert sample(text, "catdog_broker_up") == 0
    assert sample(text, "catdog_images_labeled_total") == 49
    exporter.redis_client.cache_clear()


def test_every_sample_line_is_valid_exposition_format(session: Session, broker: str) -> None:
    """Every line is a HELP or TYPE comment or a ``name{labels} value`` sample."""
    metrics.record_batch(redis.Redis.from_url(broker), "w@h", 3, 0.5)
    sample_line = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? [-+0-9.eInfa]+$')
    for line in exporter.metrics_text(session, broker).splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample_line.match(line), line


def test_the_http_endpoint_serves_metrics_and_nothing_else() -> None:
    """``GET /metrics`` answers the exposition with Prometheus' content type; other paths 404."""
    server = exporter.make_server("127.0.0.1", 0, lambda: "catdog_up 1\n")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert response.read() == b"catdog_up 1\n"
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/other", timeout=5)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
