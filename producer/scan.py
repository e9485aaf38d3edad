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
from catdog.settings import Settings
from catdog.stores import FileEntry, OnSkip, Store

log = logging.getLogger(__name__)

#: Files registered per database round trip.
REGISTER_CHUNK = 5000
#: Seconds between two looks at the queue length while it is above the high-water mark.
BACKPRESSURE_POLL_S = 0.5

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
    """Create the run row, pinned to the model version that labels images now."""
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
    )
    session.add(run)
    session.flush()
    return run


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
    scan sends nothing. ``queue_depth`` enables backpressure against ``queue_high_water``.
    Every file that is not registered is counted by reason, logged (``-v``) and passed to
    ``on_skip``.
    """
    not_registered: Counter[str] = Counter()

    def skipped_file(name: str, reason: str) -> None:
        not_registered[reason] += 1
        log.info("not registered: %s (%s)", name, reason)
        if on_skip is not None:
            on_skip(name, reason)

    with sessions.begin() as session:
        run = start_run(session, settings, ",".join(s.root for s in stores), relabel)
        run_id, version_id = run.id, run.model_version_id
    assert version_id is not None
    batch = settings.batch_size
    seen = queued = skipped_total = 0
    kept: list[int] = []
    pending: list[int] = []

    def flush(ids: list[int]) -> None:
        nonlocal queued
        if queue_depth is not None:
            while queue_depth() > settings.queue_high_water:
                time.sleep(BACKPRESSURE_POLL_S)
        send(run_id, ids)
        queued += len(ids)

    for store in stores:
        for chunk in _chunks(store.walk(skipped_file), REGISTER_CHUNK):
            with sessions.begin() as session:
                todo, skipped = register_images(
                    session, store.root, chunk, version_id, relabel, retry_failed
                )
                # Counters are increments in SQL: workers update the same row concurrently.
                session.execute(
                    update(ScanRun)
                    .where(ScanRun.id == run_id)
                    .values(
                        files_seen=ScanRun.files_seen + len(chunk),
                        skipped=ScanRun.skipped + len(skipped),
                        total=ScanRun.total + len(todo),
                    )
                )
            seen += len(chunk)
            skipped_total += len(skipped)
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
    with sessions.begin() as session:
        session.execute(update(ScanRun).where(ScanRun.id == run_id).values(enqueued=utcnow()))
        finish_run_if_complete(session, run_id)
    if on_progress is not None:
        on_progress(seen, queued)
    log.info("run %d: %d files, %d queued, %d skipped", run_id, seen, queued, skipped_total)
    return ScanSummary(run_id, seen, queued, skipped_total, kept, not_registered)
