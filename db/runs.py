"""A scan run's life: who produces it, whether that producer is still there, how it ended.

A run is ``scanning`` while its producer registers and queues, ``labeling`` once everything
is queued, ``finished`` once every queued image has a result. A producer that stops early
marks its run ``interrupted`` (a signal or an error); one that died without a word (SIGKILL,
a full disk, a database gone at the wrong moment) is seen as ``abandoned`` by ``status``, the
metrics and the next scan, which also marks it so. An ended run waits for nothing: the batches
it did queue are still labeled and counted for it, and its other images are queued by the
next scan of the same root.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from catdog.db.models import ScanRun, utcnow

#: Seconds between two heartbeats of a producer that is waiting (backpressure, a slow walk).
HEARTBEAT_S = 30.0
#: A run whose producer has not been heard of for this long is abandoned. Ample against
#: HEARTBEAT_S: a registration chunk (5,000 files) over a slow share can take minutes.
STALE_AFTER = timedelta(minutes=10)
#: Longest end_reason stored (an exception's text can be long).
REASON_CHARS = 500


def this_producer() -> str:
    """``host:pid`` of this process, as stored in ``scan_runs.producer``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _local_pid(producer: str | None) -> int | None:
    """The pid of a producer that ran on this host, else None."""
    host, _, pid = (producer or "").rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def producer_gone(run: ScanRun, now: datetime | None = None) -> bool:
    """True when a run that has not queued everything has nobody producing it any more.

    A producer on this host is asked directly (is its pid alive?); one elsewhere is gone when
    its heartbeat is older than ``STALE_AFTER`` (runs from before heartbeats count from their
    start).
    """
    if run.enqueued is not None or run.ended is not None:
        return False
    pid = _local_pid(run.producer)
    if pid is not None:
        return not _alive(pid)
    last = _aware(run.heartbeat or run.started)
    return (now or utcnow()) - last > STALE_AFTER


def run_state(run: ScanRun, now: datetime | None = None) -> str:
    """scanning, labeling, finished, interrupted or abandoned."""
    if run.ended is not None:
        return "interrupted" if (run.end_reason or "").startswith("interrupted") else "abandoned"
    if run.finished is not None:
        return "finished"
    if producer_gone(run, now):
        return "abandoned"
    return "labeling" if run.enqueued is not None else "scanning"


def is_live(run: ScanRun, now: datetime | None = None) -> bool:
    """True while the run may still get results it waits for (scanning or labeling)."""
    return run_state(run, now) in ("scanning", "labeling")


def pending(run: ScanRun, now: datetime | None = None) -> int:
    """Queued images of a live run still without a result; 0 for a run that ended, whose
    unqueued images belong to the next scan."""
    if not is_live(run, now):
        return 0
    return max(run.total - run.done - run.failed, 0)


def beat(session: Session, run_id: int) -> None:
    """The producer is alive: refresh the run's heartbeat."""
    session.execute(update(ScanRun).where(ScanRun.id == run_id).values(heartbeat=utcnow()))


def end_run(session: Session, run_id: int, reason: str) -> None:
    """Mark a run that will queue nothing more as ended early, with why (no-op once it has
    queued everything or ended)."""
    session.execute(
        update(ScanRun)
        .where(ScanRun.id == run_id, ScanRun.enqueued.is_(None), ScanRun.ended.is_(None))
        .values(ended=utcnow(), end_reason=reason[:REASON_CHARS])
    )


def end_abandoned_runs(session: Session, now: datetime | None = None) -> list[int]:
    """Mark every run whose producer is gone as abandoned; return their ids."""
    now = now or utcnow()
    candidates = session.scalars(
        select(ScanRun).where(ScanRun.enqueued.is_(None), ScanRun.ended.is_(None))
    ).all()
    gone = [run for run in candidates if producer_gone(run, now)]
    for run in gone:
        last = _aware(run.heartbeat or run.started)
        end_run(
            session,
            run.id,
            f"abandoned: producer {run.producer or 'unknown'} gone, last heard of "
            f"{last:%Y-%m-%d %H:%M:%S} UTC",
        )
    return [run.id for run in gone]
