"""Run progress for humans: a table of runs and a live bar for one run."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from catdog.db.models import ScanRun

#: Seconds between two looks at the database while waiting.
POLL_S = 0.5


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def rate_and_eta(run: ScanRun) -> tuple[float, float | None]:
    """Images per second since the run started, and seconds left at that rate."""
    end = _aware(run.finished) if run.finished else datetime.now(UTC)
    elapsed = max((end - _aware(run.started)).total_seconds(), 1e-6)
    processed = run.done + run.failed
    rate = processed / elapsed
    pending = max(run.total - processed, 0)
    eta = None if rate == 0 else pending / rate
    return rate, (0.0 if run.finished else eta)


def status_table(runs: list[ScanRun]) -> Table:
    """One line per run."""
    table = Table("run", "root", "state", "done", "failed", "pending", "skipped", "img/s", "ETA")
    for r in runs:
        rate, eta = rate_and_eta(r)
        state = "finished" if r.finished else ("labeling" if r.enqueued else "scanning")
        table.add_row(
            str(r.id),
            Text(r.root),  # a folder named "[/]" is data, not Rich markup
            state,
            str(r.done),
            str(r.failed),
            str(max(r.total - r.done - r.failed, 0)),
            str(r.skipped),
            f"{rate:.1f}",
            "-" if eta is None else f"{eta:.0f}s",
        )
    return table


def _runs(sessions: sessionmaker[Session], run_id: int | None, limit: int) -> list[ScanRun]:
    with sessions() as session:
        stmt = select(ScanRun).order_by(ScanRun.id.desc()).limit(limit)
        if run_id is not None:
            stmt = select(ScanRun).where(ScanRun.id == run_id)
        return list(session.scalars(stmt))


def show_status(
    sessions: sessionmaker[Session], run_id: int | None, limit: int, watch: bool
) -> None:
    """Print the runs table, or keep it live until every shown run is finished."""
    console = Console()
    runs = _runs(sessions, run_id, limit)
    if not runs:
        console.print("no scan runs yet" if run_id is None else f"no run {run_id}")
        sys.exit(0 if run_id is None else 1)
    if not watch:
        console.print(status_table(runs))
        return
    with Live(status_table(runs), console=console, refresh_per_second=2) as live:
        while any(r.finished is None for r in runs):
            time.sleep(POLL_S)
            runs = _runs(sessions, run_id, limit)
            live.update(status_table(runs))


def wait_for_run(
    sessions: sessionmaker[Session], run_id: int, timeout: float | None = None
) -> bool:
    """Show a progress bar until run ``run_id`` is finished; False on timeout."""
    started = time.monotonic()
    columns = [
        TextColumn("run {task.fields[run]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:.1f} img/s"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("labeling", total=None, run=run_id, failed=0, rate=0.0)
        while True:
            with sessions() as session:
                run = session.get(ScanRun, run_id)
                if run is None:
                    raise SystemExit(f"catdog: no run {run_id}")
                rate, _ = rate_and_eta(run)
                bar.update(
                    task,
                    total=run.total,
                    completed=run.done + run.failed,
                    failed=run.failed,
                    rate=rate,
                )
                if run.finished is not None:
                    break
            if timeout is not None and time.monotonic() - started > timeout:
                return False
            time.sleep(POLL_S)
    print(
        f"run {run_id} finished: {run.done} labeled, {run.failed} failed, "
        f"{run.skipped} already labeled",
        file=sys.stderr,
    )
    return True
