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
from catdog.db.retry import retrying
from catdog.db.reviews import MIN_AUDIT, labels_in_use, summary
from catdog.db.reviews import Summary as ReviewSummary
from catdog.db.runs import is_live, pending, run_state

#: Seconds between two looks at the database while waiting.
POLL_S = 0.5
#: Console width when stdout is not a terminal: wide enough that no column is ever cut.
UNLIMITED_WIDTH = 100_000


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def rate_and_eta(run: ScanRun) -> tuple[float, float | None]:
    """Images per second since the run started, and seconds left at that rate (0 for a run
    that waits for nothing more: finished, interrupted or abandoned)."""
    now = datetime.now(UTC)
    end = _aware(run.finished or run.ended or now)
    elapsed = max((end - _aware(run.started)).total_seconds(), 1e-6)
    rate = (run.done + run.failed) / elapsed
    if not is_live(run, now):
        return rate, 0.0
    return rate, (None if rate == 0 else pending(run, now) / rate)


def run_record(run: ScanRun) -> dict[str, object]:
    """One scan run's progress under ``catdog.ops.output.RUN_COLUMNS`` (rate in images per
    second); the same figures as the table and the metrics."""
    now = datetime.now(UTC)
    rate, eta = rate_and_eta(run)
    return {
        "run": run.id,
        "root": run.root,
        "state": run_state(run, now),
        "done": run.done,
        "failed": run.failed,
        "pending": pending(run, now),
        "skipped": run.skipped,
        "rate": round(rate, 1),
        "eta_s": None if eta is None else round(eta),
    }


def status_table(runs: list[ScanRun]) -> Table:
    """One line per run."""
    table = Table("run", "root", "state", "done", "failed", "pending", "skipped", "img/s", "ETA")
    for r in runs:
        rec = run_record(r)
        rate, eta = float(rec["rate"]), rec["eta_s"]  # type: ignore[arg-type]
        table.add_row(
            str(r.id),
            Text(r.root),  # a folder named "[/]" is data, not Rich markup
            str(rec["state"]),
            str(r.done),
            str(r.failed),
            str(rec["pending"]),
            str(r.skipped),
            f"{rate:.1f}",
            "-" if eta is None else f"{eta}s",
        )
    return table


def read_runs(sessions: sessionmaker[Session], run_id: int | None, limit: int) -> list[ScanRun]:
    """Run ``run_id``, or the newest ``limit`` runs; a database restart is waited out."""
    return retrying(lambda: _read_runs(sessions, run_id, limit), "reading scan runs")


def _read_runs(sessions: sessionmaker[Session], run_id: int | None, limit: int) -> list[ScanRun]:
    with sessions() as session:
        stmt = select(ScanRun).order_by(ScanRun.id.desc()).limit(limit)
        if run_id is not None:
            stmt = select(ScanRun).where(ScanRun.id == run_id)
        return list(session.scalars(stmt))


def show_status(
    sessions: sessionmaker[Session], run_id: int | None, limit: int, watch: bool
) -> None:
    """Print the runs table, or keep it live until no shown run waits for anything.

    Raises ``LookupError`` for a ``run_id`` that does not exist.
    """
    # A terminal gets a table that fits it; a pipe or a file gets every character of every
    # root (Rich would cut a long one to its first few characters and "…").
    console = Console() if sys.stdout.isatty() else Console(width=UNLIMITED_WIDTH)
    runs = read_runs(sessions, run_id, limit)
    if not runs:
        if run_id is not None:
            raise LookupError(f"no run {run_id}")
        console.print("no scan runs yet")
        return
    if not watch:
        console.print(status_table(runs))
        for line in _review(sessions):
            console.print(Text(line))
        return
    with Live(status_table(runs), console=console, refresh_per_second=2) as live:
        while any(is_live(r) for r in runs):
            time.sleep(POLL_S)
            runs = read_runs(sessions, run_id, limit)
            live.update(status_table(runs))


def _review(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return review_status(session)


def review_status(session: Session) -> list[str]:
    """Human review's lines for the production model's labels; none when nobody reviews."""
    review = summary(session, labels_in_use(session))
    if not review.pending and not sum(review.outcomes.values()):
        return []
    return review_lines(review)


def _read_run(sessions: sessionmaker[Session], run_id: int) -> ScanRun | None:
    with sessions() as session:
        return session.get(ScanRun, run_id)


def wait_for_run(
    sessions: sessionmaker[Session], run_id: int, timeout: float | None = None
) -> bool:
    """Show a progress bar until run ``run_id`` is finished; False on timeout or when the run
    ended without finishing (its producer was interrupted or is gone)."""
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
            # A database restart while waiting costs a warning line, not the wait.
            run = retrying(lambda: _read_run(sessions, run_id), f"reading run {run_id}")
            if run is None:
                raise LookupError(f"no run {run_id}")
            rate, _ = rate_and_eta(run)
            bar.update(
                task,
                total=run.total,
                completed=run.done + run.failed,
                failed=run.failed,
                rate=rate,
            )
            if not is_live(run):
                break
            if timeout is not None and time.monotonic() - started > timeout:
                return False
            time.sleep(POLL_S)
    state = run_state(run)
    if state != "finished":
        print(f"run {run_id} {state} ({run.end_reason or 'producer gone'})", file=sys.stderr)
        return False
    print(
        f"run {run_id} finished: {run.done} labeled, {run.failed} failed, "
        f"{run.skipped} already labeled",
        file=sys.stderr,
    )
    return True


def review_lines(s: ReviewSummary) -> list[str]:
    """Human review in a few lines: answers, changes, and the audit estimate."""
    lines = [
        f"human labels: {s.human}; {s.outcomes.get('skipped', 0)} skipped and "
        f"{s.outcomes.get('ambiguous', 0)} ambiguous (never trained on); "
        f"{s.pending} images awaiting review",
        f"model labels changed by reviewers: {s.changed} of {s.changed + s.confirmed} reviewed",
    ]
    whose = f"labels of {s.version}" if s.version else "labels"
    interval = s.interval
    if s.accuracy is None or interval is None:
        lines.append(f"estimated accuracy of unreviewed {whose}: no audit answers yet")
        return lines
    low, high = interval
    line = (
        f"estimated accuracy of unreviewed {whose}: {s.accuracy:.1%} "
        f"(95% Wilson interval {low:.1%}-{high:.1%}, {s.audit_correct}/{s.audit_n} audit "
        "labels confirmed)"
    )
    if s.too_small:
        line += f"; sample too small to rely on (fewer than {MIN_AUDIT} audit answers)"
    lines.append(line)
    return lines
