"""Commands of the labeling pipeline: classify, scan, worker, status, export, db."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from catdog.settings import Settings, get_settings


def _database(settings: Settings):  # type: ignore[no-untyped-def]
    """Engine + session factory with migrations applied (the embedded mode needs no setup)."""
    from catdog.db.engine import engine_for, session_factory
    from catdog.db.migrate import upgrade

    engine = engine_for(settings.database())
    upgrade(engine)
    return engine, session_factory(engine)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"catdog: {message}", err=True)
    sys.exit(code)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_file", type=click.Path(path_type=Path), help="A .keras model.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "jsonl"]), default="table")
@click.option("--threshold", type=float, help="Below this confidence the label is 'uncertain'.")
def classify(
    paths: tuple[Path, ...], model_file: Path | None, fmt: str, threshold: float | None
) -> None:
    """Label images under PATHS in this process and print one row per image."""
    from rich.progress import Progress

    from catdog.db.registry import ModelNotFound, current_version
    from catdog.ops.output import rows_for, write_rows
    from catdog.producer.scan import scan
    from catdog.stores import LocalStore
    from catdog.workers.inference import InferenceContext, StartedBatch, finish_batch, start_batch

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"path not found: {', '.join(missing)}")
    updates: dict[str, object] = {}
    if model_file is not None:
        if not model_file.is_file():
            _fail(f"model file not found: {model_file}")
        updates["model"] = model_file
    if threshold is not None:
        updates["confidence_threshold"] = threshold
    settings = get_settings().model_copy(update=updates)
    _, sessions = _database(settings)
    try:
        with sessions.begin() as session:
            version = current_version(session, settings)
            version_id = version.id
    except ModelNotFound as exc:
        _fail(str(exc))
    ctx = InferenceContext.create(settings)
    with ctx.sessions.begin() as session:
        ctx.current_model(session)  # load before the run's clock starts
    stores = [LocalStore(p) for p in paths]
    with Progress(transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("classifying", total=None)

        pending: list[StartedBatch] = []

        def send(run_id: int, ids: list[int]) -> None:
            # One batch ahead: its files decode while the previous batch predicts and is
            # stored, so neither the model nor the decoders wait at batch boundaries.
            pending.append(start_batch(ctx, run_id, ids))
            if len(pending) > 1:
                bar.advance(task, finish_batch(ctx, pending.pop(0)).images)

        # classify always answers with this model: only its own labels count as done.
        summary = scan(ctx.sessions, settings, stores, send, relabel=True, keep_ids=True)
        for batch in pending:
            bar.advance(task, finish_batch(ctx, batch).images)
    if summary.files_seen == 0:
        _fail("no images found under " + ", ".join(str(p) for p in paths), code=1)
    with sessions() as session:
        rows = rows_for(session, summary.image_ids, version_id)
    write_rows(rows, fmt)
    ctx.close()


@click.command("scan")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Show progress and return when the run is done.")
@click.option("--relabel", is_flag=True, help="Re-label images labeled by an older model.")
@click.option("--retry-failed", is_flag=True, help="Queue images that failed before again.")
def scan_cmd(root: Path, wait: bool, relabel: bool, retry_failed: bool) -> None:
    """Register images under ROOT and queue batches for the workers."""
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from catdog.broker import make_celery
    from catdog.producer.queue import BrokerQueue
    from catdog.producer.scan import scan
    from catdog.stores import LocalStore

    settings = get_settings()
    if settings.embedded:
        _fail("CATDOG_BROKER_URL is not set: start Redis and workers, or use `catdog classify`")
    if not root.exists():
        _fail(f"path not found: {root}")
    _, sessions = _database(settings)
    store = LocalStore(root)
    queue = BrokerQueue(make_celery(settings), store.root)
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    with Progress(*columns, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("scanning")

        def progress(seen: int, queued: int) -> None:
            bar.update(task, description=f"scanning: {seen} files, {queued} queued")

        summary = scan(
            sessions, settings, [store], queue.send, queue.depth, relabel, retry_failed, progress
        )
    click.echo(
        f"run {summary.run_id}: {summary.files_seen} files, {summary.queued} queued, "
        f"{summary.skipped} already labeled"
    )
    if wait:
        from catdog.ops.status import wait_for_run

        ok = wait_for_run(sessions, summary.run_id)
        sys.exit(0 if ok else 1)


@click.command()
@click.option(
    "--queues",
    "-Q",
    default="inference",
    show_default=True,
    help="Comma-separated: inference, training.",
)
@click.option(
    "--concurrency",
    "-c",
    type=int,
    default=1,
    show_default=True,
    help="Batches at a time in this process (threads sharing one model).",
)
@click.option(
    "--pool",
    type=click.Choice(["solo", "threads"]),
    default=None,
    help="Default: solo for 1, threads above (never prefork: TensorFlow can't fork).",
)
@click.option(
    "--hostname", "-n", default=None, help="Worker node name (default catdog-QUEUES@host)."
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def worker(
    queues: str, concurrency: int, pool: str | None, hostname: str | None, loglevel: str
) -> None:
    """Start a Celery worker for the inference or training queue."""
    settings = get_settings()
    if settings.embedded:
        _fail("CATDOG_BROKER_URL is not set: a worker needs a broker (e.g. redis://host:6379/0)")
    from catdog.workers.app import app

    if "training" in queues.split(","):
        import catdog.training.tasks  # noqa: F401 - registers catdog.train

    pool = pool or ("solo" if concurrency == 1 else "threads")
    os.environ["CATDOG_WORKER_QUEUES"] = queues  # start-up hooks load only what is served
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "--pool",
        pool,
        "-E",
        "--loglevel",
        loglevel,
        "-n",
        hostname or f"catdog-{queues.replace(',', '-')}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


@click.command()
@click.argument("run_id", required=False, type=int)
@click.option("--watch", is_flag=True, help="Refresh until the run(s) are done.")
@click.option("--limit", default=10, show_default=True, help="Runs to show.")
def status(run_id: int | None, watch: bool, limit: int) -> None:
    """Progress of scan runs: done, failed, pending, rate and ETA."""
    from catdog.ops.status import show_status, wait_for_run

    _, sessions = _database(get_settings())
    if watch and run_id is not None:
        sys.exit(0 if wait_for_run(sessions, run_id) else 1)
    show_status(sessions, run_id, limit, watch)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv")
@click.option("--out", type=click.Path(path_type=Path), help="File to write (default stdout).")
@click.option(
    "--details",
    is_flag=True,
    help="Add every class's probability, the pixel size and sha256 of the file as read, "
    "and when it was labeled.",
)
def export(fmt: str, out: Path | None, details: bool) -> None:
    """Latest result per image, failures included (same columns as classify)."""
    from catdog.ops.output import all_rows, write_rows

    _, sessions = _database(get_settings())
    with sessions() as session:
        if out is None:
            n = write_rows(all_rows(session), fmt, details=details)
        else:
            with out.open("w", newline="", encoding="utf-8") as fh:
                n = write_rows(all_rows(session), fmt, fh, details=details)
    click.echo(f"exported {n} rows" + (f" to {out}" if out else ""), err=True)


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
def upgrade() -> None:
    """Apply migrations to CATDOG_DATABASE_URL."""
    _database(get_settings())
    click.echo("database is up to date")


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (classify, scan_cmd, worker, status, export, db):
        group.add_command(command)
