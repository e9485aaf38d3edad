"""Runs end and pending stays true: interrupted, abandoned and resumed scans, on SQLite and
PostgreSQL, driven through the producer's plain ``scan`` function."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from catdog.db.engine import make_engine, session_factory
from catdog.db.migrate import upgrade
from catdog.db.models import ModelVersion, ScanRun, utcnow
from catdog.db.queries import Outcome, save_outcomes
from catdog.db.runs import STALE_AFTER, end_run, pending, run_state
from catdog.ops.exporter import run_families
from catdog.ops.status import run_record
from catdog.producer.scan import Stopped, scan
from catdog.settings import Settings
from catdog.stores import FileEntry, LocalStore
from helpers import make_image
from services import TcpProxy

#: Images in the test store, and per batch.
IMAGES, BATCH = 10, 2


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[str, sessionmaker[Session]]]:
    """A migrated database of each kind with a production model version, and its URL."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        s.add(
            ModelVersion(
                version="v1",
                file="m.keras",
                sha256="x",
                arch="tiny",
                classes=["cat", "dog"],
                input_size=[32, 32],
                metrics={},
                is_production=True,
            )
        )
    yield url, sessions
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """A folder of IMAGES small images."""
    for i in range(IMAGES):
        make_image(tmp_path / "store" / f"img{i}.png", "cat", (8, 8), seed=i)
    return LocalStore(tmp_path / "store")


def _settings(url: str) -> Settings:
    return Settings(database_url=url, batch_size=BATCH)  # type: ignore[arg-type]


def _worker(sessions: sessionmaker[Session]) -> Callable[[int, list[int]], None]:
    """A ``send`` that labels each batch at once, as a worker would."""

    def send(run_id: int, ids: list[int]) -> None:
        version = _version_id(sessions)
        with sessions.begin() as s:
            save_outcomes(s, run_id, version, [Outcome(i, "cat", 0.9) for i in ids])

    return send


def _version_id(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalars(select(ModelVersion.id)).one()


def _interrupted_after(batches: int, send: Callable[[int, list[int]], None]) -> Callable:
    """A ``send`` that delivers ``batches`` batches, then the operator presses Ctrl-C."""
    count = 0

    def interrupting(run_id: int, ids: list[int]) -> None:
        nonlocal count
        if count == batches:
            raise KeyboardInterrupt
        count += 1
        send(run_id, ids)

    return interrupting


def _runs(sessions: sessionmaker[Session]) -> list[ScanRun]:
    with sessions() as s:
        return list(s.scalars(select(ScanRun).order_by(ScanRun.id)))


def _pending_metric(sessions: sessionmaker[Session]) -> float:
    with sessions() as s:
        (family,) = [f for f in run_families(s) if f.name == "catdog_images_pending"]
    return family.samples[0].value


def test_an_interrupted_scan_ends_interrupted_and_the_next_scan_labels_the_rest(database, store):
    """Ctrl-C after one batch: the run says interrupted and waits for nothing; the next scan
    queues exactly the images still without a result and finishes."""
    url, sessions = database
    worker = _worker(sessions)
    with pytest.raises(KeyboardInterrupt):
        scan(sessions, _settings(url), [store], _interrupted_after(1, worker))
    (first,) = _runs(sessions)
    assert run_state(first) == "interrupted" and first.end_reason.startswith("interrupted")
    assert pending(first) == 0 and run_record(first)["eta_s"] == 0
    assert _pending_metric(sessions) == 0
    summary = scan(sessions, _settings(url), [store], worker)
    assert summary.queued == IMAGES - BATCH
    second = _runs(sessions)[1]
    assert run_state(second) == "finished" and second.done == IMAGES - BATCH


def test_three_interrupted_scans_and_a_successful_one_leave_nothing_pending(database, store):
    """The scenario of issue 11: status and the pending metric both come back to zero."""
    url, sessions = database
    worker = _worker(sessions)
    for _ in range(3):
        with pytest.raises(KeyboardInterrupt):
            scan(sessions, _settings(url), [store], _interrupted_after(1, worker))
    scan(sessions, _settings(url), [store], worker)
    runs = _runs(sessions)
    assert [run_state(r) for r in runs] == ["interrupted"] * 3 + ["finished"]
    assert [run_record(r)["pending"] for r in runs] == [0, 0, 0, 0]
    assert sum(r.done for r in runs) == IMAGES
    assert _pending_metric(sessions) == 0


def test_a_scan_that_fails_marks_its_run_with_the_reason(database, store):
    """Any error in the producer (a full disk, a broker error) ends the run, saying why."""
    url, sessions = database

    def failing(run_id: int, ids: list[int]) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        scan(sessions, _settings(url), [store], failing)
    (run,) = _runs(sessions)
    assert run_state(run) == "interrupted" and "No space left on device" in run.end_reason


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _stuck_run(sessions: sessionmaker[Session], producer: str, heartbeat_age: timedelta) -> int:
    """A run left 'scanning' by a producer that vanished without a word."""
    now = utcnow()
    with sessions.begin() as s:
        run = ScanRun(
            root="/r",
            relabel=False,
            model_version_id=_version_id(sessions),
            started=now - heartbeat_age,
            heartbeat=now - heartbeat_age,
            producer=producer,
            files_seen=10,
            skipped=0,
            total=10,
            done=4,
            failed=0,
        )
        s.add(run)
        s.flush()
        return run.id


def test_a_run_whose_producer_died_is_abandoned_and_marked_so_by_the_next_scan(database, store):
    """A SIGKILLed producer on this host is seen at once, one elsewhere once its heartbeat is
    stale; a live one elsewhere is still scanning. The next scan marks the gone ones."""
    url, sessions = database
    here = socket.gethostname()
    killed = _stuck_run(sessions, f"{here}:{_dead_pid()}", timedelta(seconds=1))
    silent = _stuck_run(sessions, "elsewhere:42", STALE_AFTER + timedelta(minutes=1))
    alive = _stuck_run(sessions, "elsewhere:43", timedelta(seconds=5))
    states = {r.id: run_state(r) for r in _runs(sessions)}
    assert states == {killed: "abandoned", silent: "abandoned", alive: "scanning"}
    assert _pending_metric(sessions) == 6  # only the live run's images are waited for
    scan(sessions, _settings(url), [store], _worker(sessions))
    marked = {r.id: r for r in _runs(sessions)}
    assert marked[killed].ended is not None and "abandoned" in marked[killed].end_reason
    assert marked[silent].ended is not None and marked[alive].ended is None


def test_the_producer_rides_out_a_short_database_outage(
    postgres_url: str, store: LocalStore, caplog: pytest.LogCaptureFixture
):
    """The database drops for two seconds mid-scan: warnings, no traceback, every image queued
    once and the run closed with exact counters."""
    target = make_url(postgres_url)
    proxy = TcpProxy(target.port or 5432, target.host or "127.0.0.1")
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        s.add(ModelVersion(version="v1", file="m", sha256="x", classes=[], input_size=[]))
        s.execute(ModelVersion.__table__.update().values(is_production=True))
    sent: list[int] = []

    def send(run_id: int, ids: list[int]) -> None:
        if not sent:  # after the first batch the database goes away for a while
            proxy.cut()
            threading.Timer(2.0, proxy.mend).start()
        sent.extend(ids)

    caplog.set_level(logging.WARNING, logger="catdog.db.retry")
    try:
        summary = scan(sessions, _settings(url), [store], send)
        (run,) = _runs(sessions)
    finally:
        proxy.close()
        engine.dispose()
    assert sorted(sent) == sorted(set(sent)) and len(sent) == IMAGES == summary.queued
    assert run.enqueued is not None and (run.files_seen, run.total) == (IMAGES, IMAGES)
    retries = [r for r in caplog.records if r.name == "catdog.db.retry"]
    assert retries and all("\n" not in r.getMessage() for r in retries)


def test_a_stop_signal_ends_the_run_naming_the_signal(database, store):
    """``docker stop`` (SIGTERM, raised as ``Stopped``) ends the run like Ctrl-C, saying so."""
    url, sessions = database

    def stopped(run_id: int, ids: list[int]) -> None:
        raise Stopped("SIGTERM")

    with pytest.raises(KeyboardInterrupt):
        scan(sessions, _settings(url), [store], stopped)
    (run,) = _runs(sessions)
    assert run_state(run) == "interrupted" and run.end_reason == "interrupted: SIGTERM"


def test_catdog_scan_stopped_by_sigterm_while_held_by_backpressure_marks_its_run(
    own_redis, sqlite_url: str, store: LocalStore, tmp_path: Path
):
    """A real `catdog scan` waiting on a full queue (no workers) is stopped: its run says
    interrupted: SIGTERM, and `catdog status` shows it with nothing pending."""
    env = {
        **os.environ,
        "CATDOG_BROKER_URL": own_redis.url(),
        "CATDOG_DATABASE_URL": sqlite_url,
        "CATDOG_BATCH_SIZE": "1",
        "CATDOG_QUEUE_HIGH_WATER": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "catdog", "scan", store.root],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sessions = session_factory(make_engine(sqlite_url))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            runs = _runs(sessions)
        except OperationalError:  # no schema yet
            runs = []
        if runs and runs[0].total == IMAGES:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # inside the backpressure wait
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    (run,) = _runs(sessions)
    assert proc.returncode != 0 and b"Traceback" not in err
    assert run_state(run) == "interrupted" and run.end_reason == "interrupted: SIGTERM"
    status = subprocess.run(
        [sys.executable, "-m", "catdog", "status", "--format", "json"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    (shown,) = json.loads(status.stdout)
    assert (shown["state"], shown["pending"]) == ("interrupted", 0)


def test_an_interrupted_classify_leaves_an_interrupted_run_and_the_next_one_completes(
    env, sqlite_url: str, photo_dir: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
):
    """Ctrl-C in the middle of `catdog classify`: status shows the run interrupted with
    nothing pending; classify again labels every image and finishes."""
    from click.testing import CliRunner

    import catdog.workers.inference as inference
    from catdog.cli import main

    env(database_url=sqlite_url, model=str(tiny_model), batch_size="2")
    real, calls = inference.finish_batch, []

    def interrupted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "finish_batch", interrupted)
    assert CliRunner().invoke(main, ["classify", str(photo_dir)]).exit_code != 0
    monkeypatch.setattr(inference, "finish_batch", real)
    assert CliRunner().invoke(main, ["classify", str(photo_dir)]).exit_code == 0
    shown = CliRunner().invoke(main, ["status", "--format", "json"]).stdout
    first, second = json.loads(shown)[::-1]
    assert (first["state"], first["pending"]) == ("interrupted", 0)
    assert (second["state"], second["pending"]) == ("finished", 0)
    assert sum(r["done"] + r["failed"] for r in (first, second)) == 8  # each image once


def test_a_producer_taken_for_gone_that_comes_back_takes_its_run_back(database, store):
    """Another scan marked the run abandoned while its producer waited on the broker; the
    producer's next write clears that, and the run finishes normally."""
    url, sessions = database
    worker = _worker(sessions)

    def slow_broker(run_id: int, ids: list[int]) -> None:
        with sessions.begin() as s:
            end_run(s, run_id, "abandoned: producer elsewhere:1 gone")
        worker(run_id, ids)

    scan(sessions, _settings(url), [store], slow_broker)
    (run,) = _runs(sessions)
    assert (run_state(run), run.ended, run.done) == ("finished", None, IMAGES)


def test_catdog_status_waits_out_a_short_database_outage(
    env, postgres_url: str, caplog: pytest.LogCaptureFixture
):
    """The database is unreachable for two seconds when `catdog status` starts: it prints
    warnings, then the runs, and exits 0 instead of a traceback."""
    from click.testing import CliRunner

    from catdog.cli import main

    target = make_url(postgres_url)
    proxy = TcpProxy(target.port or 5432, target.host or "127.0.0.1")
    url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    env(database_url=url)
    proxy.cut()
    threading.Timer(2.0, proxy.mend).start()
    caplog.set_level(logging.WARNING, logger="catdog.db.retry")
    try:
        result = CliRunner().invoke(main, ["status", "--format", "json"])
    finally:
        proxy.close()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert [r for r in caplog.records if r.name == "catdog.db.retry"]


class ListedStore:
    """A store that lists ``n`` files with long names (nothing is read in a scan)."""

    root = "/listed"

    def __init__(self, n: int) -> None:
        self.n = n

    def walk(self, on_skip: object = None) -> Iterator[FileEntry]:
        for i in range(self.n):
            yield FileEntry(f"{'deep/' * 40}{i:06d}.jpg", 1000 + i, 1.0)


def test_a_full_sqlite_disk_ends_the_run_interrupted_with_the_reason(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
):
    """The database file cannot grow (a full disk): the scan fails after its short retries,
    and its run says interrupted, why, and waits for nothing."""
    from sqlalchemy import event

    from catdog.db import retry

    engine = make_engine(sqlite_url)
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        s.add(ModelVersion(version="v1", file="m", sha256="x", classes=[], input_size=[]))
        s.execute(ModelVersion.__table__.update().values(is_production=True))
    engine.dispose()

    @event.listens_for(engine, "connect")
    def full_disk(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 2}")

    # The outage budget (the first default of retrying) down to a second.
    monkeypatch.setattr(retry.retrying, "__defaults__", (1.0, *retry.retrying.__defaults__[1:]))
    with pytest.raises(OperationalError, match="full"):
        scan(sessions, _settings(sqlite_url), [ListedStore(2000)], lambda run, ids: None)
    (run,) = _runs(sessions)
    engine.dispose()
    assert run_state(run) == "interrupted" and "full" in run.end_reason and pending(run) == 0
