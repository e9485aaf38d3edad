"""Drive scan runs on a real cluster and count what they stored (fault tests, soak bench)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select

from catdog.broker import make_celery
from catdog.db.engine import make_engine, session_factory
from catdog.db.models import Prediction, ScanRun
from catdog.producer.queue import BrokerQueue
from catdog.producer.scan import ScanSummary, scan
from catdog.settings import Settings
from catdog.stores import LocalStore


def settings_for(env: dict[str, str], **overrides: object) -> Settings:
    """The settings a ``catdog`` process started with ``env`` would read."""
    values: dict[str, object] = {
        key.removeprefix("CATDOG_").lower(): value
        for key, value in env.items()
        if key.startswith("CATDOG_") and not key.startswith("CATDOG_TEST")
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


def scan_with_broker(
    env: dict[str, str], root: Path, relabel: bool = False, **overrides: object
) -> ScanSummary:
    """What ``catdog scan ROOT [--relabel]`` does: register, then queue batches with
    backpressure."""
    settings = settings_for(env, **overrides)
    engine = make_engine(settings.database())
    app = make_celery(settings)
    store = LocalStore(root)
    queue = BrokerQueue(app, store.root)
    try:
        return scan(
            session_factory(engine), settings, [store], queue.send, queue.depth, relabel=relabel
        )
    finally:
        app.close()
        engine.dispose()


def scan_held(env: dict[str, str], root: Path, sent: list[tuple[int, list[int]]]) -> ScanSummary:
    """Run the producer with a ``send`` that keeps the batches instead of queueing them."""
    settings = settings_for(env)
    engine = make_engine(settings.database())
    try:
        return scan(
            session_factory(engine),
            settings,
            [LocalStore(root)],
            lambda run, ids: sent.append((run, ids)),
        )
    finally:
        engine.dispose()


@dataclass
class RunCount:
    """What a run stored, counted in SQL."""

    rows: int  # prediction rows of the run's images
    images: int  # distinct images among them
    labeled: int
    failed: int
    run_done: int
    run_failed: int
    run_total: int
    finished: bool
    errors: list[str]

    @property
    def exactly_once(self) -> bool:
        """Every queued image has one result, and the run's counters agree with the rows."""
        return (
            self.finished
            and self.rows == self.images == self.run_total
            and (self.labeled, self.failed) == (self.run_done, self.run_failed)
        )


def count_run(engine: Engine, run_id: int) -> RunCount:
    """Count the rows the run left."""
    with engine.connect() as conn:
        run = conn.execute(select(ScanRun).where(ScanRun.id == run_id)).one()
        rows = conn.execute(
            select(Prediction.image_id, Prediction.error).where(Prediction.run_id == run_id)
        ).all()
        all_rows = conn.scalar(select(func.count()).select_from(Prediction))
    errors = [r.error for r in rows if r.error is not None]
    return RunCount(
        rows=int(all_rows or 0),
        images=len({r.image_id for r in rows}),
        labeled=len(rows) - len(errors),
        failed=len(errors),
        run_done=run.done,
        run_failed=run.failed,
        run_total=run.total,
        finished=run.finished is not None,
        errors=errors,
    )


def wait_for_run(database_url: str, run_id: int, timeout: float = 120) -> RunCount:
    """Poll until the run is finished (or the timeout passes) and return its counts."""
    engine = make_engine(database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            count = count_run(engine, run_id)
            if count.finished or time.monotonic() > deadline:
                return count
            time.sleep(0.25)
    finally:
        engine.dispose()


def count_predictions(database_url: str) -> int:
    """Prediction rows in the database."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Prediction)) or 0)
    finally:
        engine.dispose()


def label_cats_through(env: dict[str, str], root: Path, n: int) -> RunCount:
    """Make ``n`` cat images, register them, send their batch to the broker by hand (as a
    producer would) and wait for the workers to finish the run."""
    from helpers import make_image

    for i in range(n):
        make_image(root / f"{i}.png", "cat", seed=i)
    sent: list[tuple[int, list[int]]] = []
    summary = scan_held(env, root, sent)
    app = make_celery(settings_for(env))
    app.send_task("catdog.classify_batch", args=list(sent[0]))
    app.close()
    return wait_for_run(env["CATDOG_DATABASE_URL"], summary.run_id, timeout=60)
