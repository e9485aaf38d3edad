"""A scan run: walk a store, register its images, and hand out batches with backpressure."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from catdog.db import registry
from catdog.db.models import ScanRun, utcnow
from catdog.db.queries import finish_run_if_complete, register_images
from catdog.db.retry import describe, retrying
from catdog.db.runs import HEARTBEAT_S, beat, end_abandoned_runs, end_run, this_producer
from catdog.settings import Settings
from catdog.stores import FileEntry, OnSkip, Store

log = logging.getLogger(__name__)

#: Files registered per database round trip.
REGISTER_CHUNK = 5000
#: Seconds between two looks at the queue length while it is above the high-water mark.
BACKPRESSURE_POLL_S = 0.5

#: Seconds to spend marking a run interrupted after the scan failed (often the database is
#: what failed: do not hold the operator's prompt for long).
END_BUDGET_S = 10.0

#: Sends one batch: (run id, image ids).
Send = Callable[[int, list[int]], None]
#: Current number of batches waiting in the queue.
QueueDepth = Callable[[], int]


@dataclass
class ScanSummary:
    """What the producer did for one run."""

    run_id: int
    files_seen: int
    queued: int
    skipped: int
    image_ids: list[int]
    #: Files under the roots that were not registered, by reason (not an image type, ...).
    not_registered: Counter[str] = field(default_factory=Counter)


def _chunks(it: Iterator[FileEntry], size: int) -> Iterator[list[FileEntry]]:
    while chunk := list(islice(it, size)):
        yield chunk


def start_run(session: Session, settings: Settings, root: str, relabel: bool) -> ScanRun:
    """Create the run row, pinned to the model version that labels images now, and signed by
    this process so a later look can tell whether its producer is still there."""
    version = registry.current_version(session, settings)
    run = ScanRun(
        root=root,
        relabel=relabel,
        model_version_id=version.id,
        files_seen=0,
        skipped=0,
        total=0,
        done=0,
        failed=0,
        producer=this_producer(),
        heartbeat=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


class Stopped(KeyboardInterrupt):
    """The producer was told to stop by a signal other than Ctrl-C (``docker stop`` sends
    SIGTERM); raised by the command line's handler, it ends the run like Ctrl-C does."""


def _alive() -> dict[str, object]:
    """What the producer writes whenever it touches its run: a fresh heartbeat, and no "ended"
    (a scan elsewhere may have taken it for gone while it waited minutes on a broker restart).
    """
    return {"heartbeat": utcnow(), "ended": None, "end_reason": None}


def _end_reason(exc: BaseException) -> str:
    if isinstance(exc, Stopped):
        return f"interrupted: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted: SIGINT (Ctrl-C)"
    if isinstance(exc, SystemExit):
        return f"interrupted: exit {exc.code}"
    return f"interrupted: {describe(exc)}"


def _mark_ended(sessions: sessionmaker[Session], run_id: int, exc: BaseException) -> None:
    """Best effort: say why the run stops here. When the database is what failed, a later
    scan or ``status`` finds the run abandoned instead."""

    def work() -> None:
        with sessions.begin() as session:
            end_run(session, run_id, _end_reason(exc))

    try:
        retrying(work, f"marking run {run_id} interrupted", budget_s=END_BUDGET_S)
    except Exception as second:  # noqa: BLE001 - the first error is the one to raise
        log.warning(
            "run %d left unmarked (%s): a later scan will find it", run_id, describe(second)
        )


def scan(
    sessions: sessionmaker[Session],
    settings: Settings,
    stores: Sequence[Store],
    send: Send,
    queue_depth: QueueDepth | None = None,
    relabel: bool = False,
    retry_failed: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    keep_ids: bool = False,
    on_skip: OnSkip | None = None,
) -> ScanSummary:
    """Register every image in ``stores`` and send the ones needing a label in batches.

    Resumable: images already labeled (and unchanged) are skipped, so a second run of the same
    scan sends nothing, and the images an interrupted run never queued are queued now (runs
    whose producer is gone are marked abandoned first). ``queue_depth`` enables backpressure
    against ``queue_high_water``. Every file that is not registered is counted by reason,
    logged (``-v``) and passed to ``on_skip``. Each transaction rides out a short database
    outage; if the scan stops early anyway, its run is marked interrupted with the reason.
    """
    not_registered: Counter[str] = Counter()

    def skipped_file(name: str, reason: str) -> None:
        not_registered[reason] += 1
        log.info("not registered: %s (%s)", name, reason)
        if on_skip is not None:
            on_skip(name, reason)

    def begin() -> tuple[int, int | None]:
        with sessions.begin() as session:
            for gone in end_abandoned_runs(session):
                log.warning("run %d: its producer is gone; marked abandoned", gone)
            run = start_run(session, settings, ",".join(s.root for s in stores), relabel)
            return run.id, run.model_version_id

    run_id, version_id = retrying(begin, "starting a scan run")
    assert version_id is not None
    try:
        summary = _register_and_send(
            sessions,
            settings,
            stores,
            send,
            run_id,
            version_id,
            queue_depth,
            relabel,
            retry_failed,
            on_progress,
            keep_ids,
            skipped_file,
        )
    except BaseException as exc:
        _mark_ended(sessions, run_id, exc)
        raise
    summary.not_registered = not_registered
    return summary


def _register_and_send(
    sessions: sessionmaker[Session],
    settings: Settings,
    stores: Sequence[Store],
    send: Send,
    run_id: int,
    version_id: int,
    queue_depth: QueueDepth | None,
    relabel: bool,
    retry_failed: bool,
    on_progress: Callable[[int, int], None] | None,
    keep_ids: bool,
    on_skip: OnSkip,
) -> ScanSummary:
    batch = settings.batch_size
    seen = queued = skipped_total = total = 0
    kept: list[int] = []
    pending: list[int] = []
    last_beat = time.monotonic()

    def heartbeat() -> None:
        nonlocal last_beat
        if time.monotonic() - last_beat < HEARTBEAT_S:
            return

        def work() -> None:
            with sessions.begin() as session:
                beat(session, run_id)

        retrying(work, f"refreshing run {run_id}'s heartbeat")
        last_beat = time.monotonic()

    def flush(ids: list[int]) -> None:
        nonlocal queued
        if queue_depth is not None:
            while queue_depth() > settings.queue_high_water:
                heartbeat()
                time.sleep(BACKPRESSURE_POLL_S)
        send(run_id, ids)
        queued += len(ids)
        heartbeat()  # a slow consumer of batches (classify labels them in-process)

    def register(root: str, chunk: list[FileEntry]) -> tuple[list[int], list[int]]:
        with sessions.begin() as session:
            todo, skipped = register_images(session, root, chunk, version_id, relabel, retry_failed)
            # Absolute values, not increments: a retried transaction must not count twice,
            # and workers never write these columns (they add to done and failed).
            session.execute(
                update(ScanRun)
                .where(ScanRun.id == run_id)
                .values(
                    files_seen=seen + len(chunk),
                    skipped=skipped_total + len(skipped),
                    total=total + len(todo),
                    **_alive(),
                )
            )
        return todo, skipped

    for store in stores:
        for chunk in _chunks(store.walk(on_skip), REGISTER_CHUNK):
            todo, skipped = retrying(
                lambda root=store.root, chunk=chunk: register(root, chunk),  # type: ignore[misc]
                f"registering files of run {run_id}",
            )
            last_beat = time.monotonic()
            seen += len(chunk)
            skipped_total += len(skipped)
            total += len(todo)
            if keep_ids:
                kept.extend(todo)
                kept.extend(skipped)
            pending.extend(todo)
            while len(pending) >= batch:
                flush(pending[:batch])
                pending = pending[batch:]
            if on_progress is not None:
                on_progress(seen, queued)
    if pending:
        flush(pending)

    def close() -> None:
        with sessions.begin() as session:
            session.execute(
                update(ScanRun).where(ScanRun.id == run_id).values(enqueued=utcnow(), **_alive())
            )
            finish_run_if_complete(session, run_id)

    retrying(close, f"closing run {run_id}")
    if on_progress is not None:
        on_progress(seen, queued)
    log.info("run %d: %d files, %d queued, %d skipped", run_id, seen, queued, skipped_total)
    return ScanSummary(run_id, seen, queued, skipped_total, kept)
