"""catdog's Prometheus metrics: scan runs from SQL, queues and worker batches from Redis."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from catdog.broker import (
    CLASSIFY_TASK,
    INFERENCE_QUEUE,
    TRAIN_TASK,
    TRAINING_QUEUE,
    UNACKED_KEY,
    make_celery,
)
from catdog.db.migrate import upgrade
from catdog.db.models import Base, Image, ModelVersion, Prediction, ScanRun
from catdog.ops import exporter
from catdog.producer.scan import scan
from catdog.settings import Settings
from catdog.stores import LocalStore
from catdog.workers import metrics
from catdog.workers.inference import InferenceContext, classify_batch
from helpers import make_image


@pytest.fixture
def broker(redis_url: str) -> str:
    """The tests' own Redis (conftest's ``redis_url``: a private server unless told)."""
    return redis_url


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    """A SQLite database with three scan runs (finished, labeling and scanning) and four
    images, two of them failed now (a third failed, then a newer model labeled it)."""
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
        old, new = (ModelVersion(version=v, file=f"/{v}.keras", sha256=v) for v in ("old", "new"))
        images = [Image(store="/a", path=f"{i}.jpg", size=1, mtime=0.0) for i in range(4)]
        session.add_all([old, new, *images])
        session.flush()
        session.add_all(
            [
                Prediction(image_id=images[0].id, model_version_id=old.id, error="truncated"),
                Prediction(image_id=images[1].id, model_version_id=old.id, error="empty"),
                Prediction(image_id=images[2].id, model_version_id=old.id, label="cat"),
                Prediction(image_id=images[3].id, model_version_id=old.id, error="too large"),
            ]
        )
        session.flush()  # the relabel below is the newer row
        session.add(Prediction(image_id=images[3].id, model_version_id=new.id, label="dog"))
        session.commit()
        yield session
    engine.dispose()


#: One sample line: name, optional ``{labels}``, value.
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
#: One ``key="value"`` pair inside the braces (values escape ``\``, ``"`` and newlines).
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition, found by name and exact labels (any order)."""
    for line in text.splitlines():
        match = SAMPLE_LINE.match(line)
        if match and match[1] == name and dict(LABEL_PAIR.findall(match[2] or "")) == labels:
            return float(match[3])
    raise AssertionError(f"no sample {name}{labels or ''} in:\n{text}")


def test_run_counters_and_pending_images_come_from_scan_runs(session: Session) -> None:
    """Labeled, failed and pending images are reported per run and in total."""
    text = exporter.metrics_text(session)
    assert sample(text, "catdog_images_labeled_total") == 49
    assert sample(text, "catdog_images_failed") == 2
    assert sample(text, "catdog_images_pending") == 58 + 5
    assert sample(text, "catdog_run_images_pending", run="2", root="/b") == 58
    assert sample(text, "catdog_run_finished", run="1", root="/a") == 1
    assert sample(text, "catdog_run_images", run="3", root='/c \\"quoted\\"') == 5
    assert "catdog_queue_depth" not in text  # embedded: no broker to ask


def test_queue_depth_counts_waiting_and_prioritised_messages(session: Session, broker: str) -> None:
    """Queue depth counts a queue's messages, prioritised ones included (kombu's own count)."""
    app = make_celery(Settings(broker_url=broker))
    for priority in (None, None, 6):
        app.send_task(CLASSIFY_TASK, args=[None, [1]], queue=INFERENCE_QUEUE, priority=priority)
    app.send_task(TRAIN_TASK, queue=TRAINING_QUEUE)
    client = redis.Redis.from_url(broker)
    assert len(client.keys(INFERENCE_QUEUE + "*")) == 2  # kombu keeps priority 6 apart
    client.hset(UNACKED_KEY, "tag1", "m0")
    text = exporter.metrics_text(session, Settings(broker_url=broker))
    assert sample(text, "catdog_broker_up") == 1
    assert sample(text, "catdog_queue_depth", queue="inference") == 3
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
    text = exporter.metrics_text(session, Settings(broker_url=broker))
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
    started = time.monotonic()
    text = exporter.metrics_text(session, Settings(broker_url="redis://127.0.0.1:1/0"))
    assert time.monotonic() - started < 3 * exporter.REDIS_TIMEOUT_S
    assert sample(text, "catdog_broker_up") == 0
    assert sample(text, "catdog_images_labeled_total") == 49
    assert "catdog_queue_depth" not in text


def test_every_sample_line_is_valid_exposition_format(session: Session, broker: str) -> None:
    """Every line is a HELP or TYPE comment or a ``name{labels} value`` sample."""
    metrics.record_batch(redis.Redis.from_url(broker), "w@h", 3, 0.5)
    sample_line = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? [-+0-9.eInfa]+$')
    for line in exporter.metrics_text(session, Settings(broker_url=broker)).splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample_line.match(line), line


def test_the_http_endpoint_serves_metrics_and_nothing_else(session: Session) -> None:
    """``GET /metrics`` answers the exposition with Prometheus' content type; other paths 404."""
    registry = exporter.make_registry(lambda: nullcontext(session))
    server = exporter.make_server("127.0.0.1", 0, registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert sample(response.read().decode(), "catdog_images_labeled_total") == 49
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/other", timeout=5)
        assert missing.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_a_failing_scrape_answers_500_and_the_server_keeps_serving(session: Session) -> None:
    """A database error fails that scrape with a 500; the next scrape is served."""
    calls = []

    def sessions() -> AbstractContextManager[Session]:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT 1", {}, Exception("database is away"))
        return nullcontext(session)

    server = exporter.make_server("127.0.0.1", 0, exporter.make_registry(sessions))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(url, timeout=5)
        assert failed.value.code == 500
        with urllib.request.urlopen(url, timeout=5) as response:
            assert sample(response.read().decode(), "catdog_images_failed") == 2
    finally:
        server.shutdown()
        server.server_close()


def test_the_exporter_talks_to_redis_with_the_tls_settings(tmp_path: Path) -> None:
    """A ``rediss://`` broker with a private CA: the scrape's Redis client trusts that CA."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    settings = Settings(broker_url="rediss://broker.invalid:6380/0", redis_ca_file=ca)
    collector = exporter.CatdogCollector(nullcontext, settings)  # type: ignore[arg-type]
    assert collector.client is not None
    assert collector.client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)


def test_retried_failures_count_once_and_not_after_a_retry_labels_them(
    photo_dir: Path, sqlite_url: str, tiny_model: Path
) -> None:
    """Two broken files, scanned then retried with ``--retry-failed``: the runs record four
    failures, the metric two images; once the files are fixed and retried, none."""
    settings = Settings(database_url=sqlite_url, model=tiny_model)  # type: ignore[arg-type]
    ctx = InferenceContext.create(settings)
    upgrade(ctx.engine)

    def send(run: int, ids: list[int]) -> None:
        classify_batch(ctx, run, ids)

    def scan_and_label(retry_failed: bool = False) -> None:
        scan(ctx.sessions, settings, [LocalStore(photo_dir)], send, retry_failed=retry_failed)

    def failed_now() -> float:
        with ctx.sessions() as session:
            return sample(exporter.metrics_text(session), "catdog_images_failed")

    scan_and_label()
    scan_and_label(retry_failed=True)
    with ctx.sessions() as session:
        assert sum(run.failed for run in session.scalars(select(ScanRun))) == 4
    assert failed_now() == 2
    for broken in ("broken.jpg", "empty.png"):  # fixed files: new size and mtime
        make_image(photo_dir / broken, "cat")
    scan_and_label(retry_failed=True)
    ctx.close()
    assert failed_now() == 0
