"""Commands of the labeling pipeline: classify, scan, worker, status, export, db.

Errors follow click's codes: a bad command line (an unknown option, a path that does not
exist) is a ``UsageError`` and exits 2; a failure while running (no model, no broker, no
images) is a ``ClickException`` and exits 1.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path
from typing import IO

import click

from catdog.cli.options import STORE_ROOT, open_scan_store, output_options, threshold_option
from catdog.settings import Settings, get_settings

#: What a command that needs the broker says in embedded mode.
NO_BROKER = "CATDOG_BROKER_URL is not set"


def _database(settings: Settings):  # type: ignore[no-untyped-def]
    """Engine + session factory with migrations applied (the embedded mode needs no setup);
    a database that is briefly away (a restart) is waited for, with a warning per retry."""
    from catdog.db.engine import engine_for, session_factory
    from catdog.db.migrate import upgrade
    from catdog.db.retry import retrying

    engine = engine_for(settings.database())
    retrying(lambda: upgrade(engine), "applying migrations")
    return engine, session_factory(engine)


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into ``Stopped`` (a KeyboardInterrupt), so the scan marks its run."""
    import signal

    from catdog.producer.scan import Stopped

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)


def read_only_sessions(settings: Settings):  # type: ignore[no-untyped-def]
    """Sessions for a command that only reads (status, export, report, models list): it
    never creates or migrates the schema, and says in one line when there is none."""
    from catdog.db.engine import engine_for, session_factory
    from catdog.db.migrate import SchemaNotReady, missing_sqlite_file, require_schema, safe_url
    from catdog.db.retry import retrying

    url = settings.database()
    if missing_sqlite_file(url) is not None:  # connecting would create the file
        raise click.ClickException(f"no catdog schema in {safe_url(url)}: run `catdog db upgrade`")
    engine = engine_for(url)
    try:
        retrying(lambda: require_schema(engine, url), "reading the schema revision")
    except SchemaNotReady as exc:
        raise click.ClickException(str(exc)) from exc
    return session_factory(engine)


def _stdout() -> IO[str]:
    """stdout for rows: a character the terminal's encoding lacks is written as ``\\xNN``
    rather than ending the export half-way."""
    out = sys.stdout
    if isinstance(out, io.TextIOWrapper):
        out.reconfigure(errors="backslashreplace")
    return out


@click.command()
@click.argument("paths", nargs=-1, required=True, type=STORE_ROOT)
@click.option(
    "--model",
    "model_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .keras model (default: CATDOG_MODEL, else the production model).",
)
@output_options()
@threshold_option
def classify(
    paths: tuple[str, ...], model_file: Path | None, fmt: str, threshold: float | None
) -> None:
    """Label images under PATHS (folders, files or store URLs such as s3://bucket/prefix) in
    this process and print one row per image.

    Rows go to stdout; progress and a summary line (labeled, failed, already labeled, not
    registered, seconds) go to stderr. Files that are not registered (not an image type,
    links, unreadable) are counted by reason; `catdog -v classify` lists each one.
    """
    from catdog.cli.progress import labeling_progress, not_registered_text, stderr_console
    from catdog.db.registry import ModelNotFound, current_version
    from catdog.ops.output import rows_for, write_rows
    from catdog.producer.scan import scan
    from catdog.stores import is_url
    from catdog.workers.inference import InferenceContext, StartedBatch, finish_batch, start_batch

    started = time.monotonic()
    updates: dict[str, object] = {}
    if model_file is not None:
        updates["model"] = model_file
    settings = get_settings().model_copy(update=updates)
    if threshold is None:
        threshold = settings.confidence_threshold
    stores = [open_scan_store(p, settings.store_roots) for p in paths]
    done = failed = finished = 0
    with labeling_progress(stderr_console()) as bar:
        # Something shows from the first second: loading a model takes seconds.
        task = bar.add_task("loading model ...", total=None)
        _, sessions = _database(settings)
        try:
            with sessions.begin() as session:
                version = current_version(session, settings)
                version_id = version.id
        except ModelNotFound as exc:
            raise click.ClickException(str(exc)) from exc
        ctx = InferenceContext.create(settings)
        try:
            with ctx.sessions.begin() as session:
                ctx.current_model(session)  # load before the run's clock starts
        except ModelNotFound as exc:  # e.g. no .tflite beside it and no TensorFlow installed
            raise click.ClickException(str(exc)) from exc
        # A first walk counts the images, so the bar has a total and a time left. Only on
        # local disks: listing an object store twice would double its requests.
        total: int | None = None
        if not any(is_url(store.root) for store in stores):
            bar.update(task, description="counting files ...")
            total = 0
            for store in stores:
                for _ in store.walk():
                    total += 1
                    if total % 1000 == 0:
                        bar.update(task, completed=total)
        bar.update(task, description="labeling", total=total, completed=0)
        pending: list[StartedBatch] = []
        # Images found not to need a label (already labeled by this model), as of the
        # scan's last progress report.
        unqueued = 0

        def finish(batch: StartedBatch) -> None:
            nonlocal done, failed, finished
            result = finish_batch(ctx, batch)
            done, failed = done + result.done, failed + result.failed
            finished += result.images
            bar.update(task, completed=finished + unqueued)

        def send(run_id: int, ids: list[int]) -> None:
            # One batch ahead: its files decode while the previous batch predicts and is
            # stored, so neither the model nor the decoders wait at batch boundaries.
            pending.append(start_batch(ctx, run_id, ids))
            if len(pending) > 1:
                finish(pending.pop(0))

        def progress(seen: int, queued: int) -> None:
            nonlocal unqueued
            unqueued = seen - queued  # already labeled, plus less than a batch not yet sent
            bar.update(task, completed=finished + unqueued)

        # classify always answers with this model: only its own labels count as done.
        summary = scan(
            ctx.sessions, settings, stores, send, relabel=True, on_progress=progress, keep_ids=True
        )
        for batch in pending:
            finish(batch)
    ctx.close()
    click.echo(
        f"{done} labeled, {failed} failed, {summary.skipped} already labeled, "
        f"{not_registered_text(summary.not_registered)}, {time.monotonic() - started:.1f} s"
        + (" (catdog -v classify lists them)" if summary.not_registered else ""),
        err=True,
    )
    if summary.files_seen == 0:
        raise click.ClickException("no images found under " + ", ".join(map(str, paths)))
    with sessions() as session:
        rows = rows_for(session, summary.image_ids, version_id, threshold)
    write_rows(rows, fmt, _stdout())


@click.command("scan")
@click.argument("root", type=STORE_ROOT)
@click.option("--wait", is_flag=True, help="Show progress and return when the run is done.")
@click.option("--relabel", is_flag=True, help="Re-label images labeled by an older model.")
@click.option("--retry-failed", is_flag=True, help="Queue images that failed before again.")
def scan_cmd(root: str, wait: bool, relabel: bool, retry_failed: bool) -> None:
    """Register images under ROOT (a folder or a store URL) and queue batches for the workers.

    Files that are not registered (not an image type, links, unreadable) are counted by
    reason on stderr; `catdog -v scan` lists each one.
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from catdog.broker import make_celery
    from catdog.cli.progress import not_registered_text, stderr_console
    from catdog.cli.waits import wait_for_broker
    from catdog.producer.queue import BrokerQueue
    from catdog.producer.scan import scan

    settings = get_settings()
    if settings.embedded:
        raise click.ClickException(
            f"{NO_BROKER}: start Redis and workers, or use `catdog classify`"
        )
    _, sessions = _database(settings)
    store = open_scan_store(root, settings.store_roots)
    app = make_celery(settings)
    wait_for_broker(app, settings)  # a wrong URL or password is an error, not a silent hang
    queue = BrokerQueue(app, store.root)
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    console = stderr_console()  # stdout is for the run line only
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task("scanning")

        def progress(seen: int, queued: int) -> None:
            bar.update(task, description=f"scanning: {seen} files, {queued} queued")

        _stop_on_sigterm()  # `docker stop`: the run ends "interrupted", as with Ctrl-C
        summary = scan(
            sessions, settings, [store], queue.send, queue.depth, relabel, retry_failed, progress
        )
    click.echo(
        f"run {summary.run_id}: {summary.files_seen} files, {summary.queued} queued, "
        f"{summary.skipped} already labeled"
    )
    if summary.not_registered:
        click.echo(
            f"{not_registered_text(summary.not_registered)}: catdog -v scan lists them", err=True
        )
    if wait:
        from catdog.broker import INFERENCE_QUEUE
        from catdog.cli.waits import ConsumerWatch
        from catdog.db.models import ScanRun
        from catdog.ops.status import wait_for_run

        def processed() -> object:
            with sessions() as session:
                run = session.get(ScanRun, summary.run_id)
                return None if run is None else run.done + run.failed

        stop_watch = ConsumerWatch(settings, INFERENCE_QUEUE).watch(processed)
        try:
            finished = wait_for_run(sessions, summary.run_id)
        finally:
            stop_watch()
        if not finished:
            raise click.ClickException(f"run {summary.run_id} did not finish")


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
@click.option(
    "--loglevel",
    "-l",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Celery's log level.",
)
def worker(
    queues: str, concurrency: int, pool: str | None, hostname: str | None, loglevel: str
) -> None:
    """Start a Celery worker for the inference or training queue."""
    settings = get_settings()
    if settings.embedded:
        raise click.ClickException(
            f"{NO_BROKER}: a worker needs a broker (e.g. redis://host:6379/0)"
        )
    from catdog.cli.waits import wait_for_broker
    from catdog.workers.app import app
    from catdog.workers.health import check_database

    # A worker that cannot store results is not ready: one line and exit 1 (through the
    # catdog group) instead of a traceback and "ready.", so a restart policy tries again.
    check_database(settings)
    wait_for_broker(app, settings)
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
@click.option(
    "--limit", type=click.IntRange(1), default=10, show_default=True, help="Runs to show."
)
@output_options()
def status(run_id: int | None, watch: bool, limit: int, fmt: str) -> None:
    """Progress of scan runs: done, failed, pending, rate and ETA."""
    from catdog.db.models import ScanRun
    from catdog.db.retry import retrying
    from catdog.ops.output import RUN_COLUMNS, write_records
    from catdog.ops.status import read_runs, run_record, show_status, wait_for_run

    if watch and fmt != "table":
        raise click.UsageError("--watch shows a live table: use it without --format")
    sessions = read_only_sessions(get_settings())

    def exists() -> bool:
        with sessions() as session:
            return session.get(ScanRun, run_id) is not None

    if run_id is not None:
        if not retrying(exists, f"reading run {run_id}"):
            raise click.ClickException(f"no run {run_id}")
        if watch:
            if not wait_for_run(sessions, run_id):
                raise click.ClickException(f"run {run_id} did not finish")
            return
    if fmt != "table":
        write_records(map(run_record, read_runs(sessions, run_id, limit)), RUN_COLUMNS, fmt)
        return
    try:
        show_status(sessions, run_id, limit, watch)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@output_options(default="csv")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default stdout)."
)
@click.option(
    "--details",
    is_flag=True,
    help="Add every class's probability, the pixel size and sha256 of the file as read, "
    "and when it was labeled.",
)
@threshold_option
def export(fmt: str, out: Path | None, details: bool, threshold: float | None) -> None:
    """Latest result per image, failures included (same columns as classify).

    Rows are streamed from the database: memory stays flat for millions of results in csv,
    jsonl and json (the table format collects them first).
    """
    from catdog.ops.output import all_rows, write_rows

    settings = get_settings()
    if threshold is None:
        threshold = settings.confidence_threshold
    sessions = read_only_sessions(settings)
    with sessions() as session:
        if out is None:
            n = write_rows(all_rows(session, threshold), fmt, _stdout(), details=details)
        else:
            try:
                fh = out.open("w", newline="", encoding="utf-8")
            except OSError as exc:
                raise click.ClickException(f"cannot write {out}: {exc.strerror}") from exc
            with fh:
                n = write_rows(all_rows(session, threshold), fmt, fh, details=details)
    click.echo(f"exported {n} rows" + (f" to {out}" if out else ""), err=True)


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
def upgrade() -> None:
    """Apply migrations to CATDOG_DATABASE_URL and say what was done."""
    from catdog.db.engine import engine_for
    from catdog.db.migrate import safe_url, upgrade_message
    from catdog.db.migrate import upgrade as migrate
    from catdog.db.retry import retrying

    url = get_settings().database()
    before, after = retrying(lambda: migrate(engine_for(url)), "applying migrations")
    click.echo(f"{safe_url(url)}: {upgrade_message(before, after)}")


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    for command in (classify, scan_cmd, worker, status, export, db):
        group.add_command(command)
