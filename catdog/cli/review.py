"""``catdog review``: send doubtful labels to people and bring their answers back.

``export`` and ``import`` work with files (no Label Studio server needed); ``push`` and
``pull`` (catdog.cli.review_studio) talk to a Label Studio server and attach themselves to
the same group.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from catdog.settings import get_settings

#: ``review export --format``: what the task file is for.
TASK_FORMATS = ("label-studio",)


@click.group()
def review() -> None:
    """Human review: doubtful labels to Label Studio, answers back as human labels."""


def register(group: click.Group) -> None:
    """Add the ``review`` group to ``group``."""
    group.add_command(review)


def sessions() -> Any:
    """A session factory on a migrated database (review commands write)."""
    from catdog.cli.pipeline import _database

    return _database(get_settings())[1]


def limit_options(command: Any) -> Any:
    """``--limit``, ``--audit``/``--no-audit``, ``--seed``: what ``export`` and ``push`` send."""
    for option in reversed(
        [
            click.option(
                "--limit",
                type=click.IntRange(min=0),
                default=200,
                show_default=True,
                help="Doubtful labels to send (smallest margin first, an even share per "
                "predicted label).",
            ),
            click.option(
                "--audit",
                type=click.IntRange(min=0),
                default=None,
                help="Random labels to send as well, confident ones included, to estimate the "
                "accuracy of unreviewed labels [default: 5% of --limit, at least 5; 0: none].",
            ),
            click.option("--no-audit", is_flag=True, help="Send no audit sample (--audit 0)."),
            click.option("--seed", type=int, default=None, help="Seed of the audit sample."),
        ]
    ):
        command = option(command)
    return command


def audit_count(audit: int | None, no_audit: bool) -> int | None:
    """The audit sample size the options ask for (None: the default for the limit)."""
    if no_audit and audit:
        raise click.UsageError("--audit and --no-audit contradict each other")
    return 0 if no_audit else audit


def choose_or_fail(session: Any, limit: int, audit: int | None, seed: int | None) -> list[Any]:
    """``choose`` with user errors (no model, bad numbers) as one line."""
    from catdog.db.registry import ModelNotFound
    from catdog.review.select import choose

    try:
        return choose(session, limit=limit, audit=audit, seed=seed)
    except (ModelNotFound, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def _write_atomically(out: Path, write: Any) -> int:
    """Write through a temporary file beside ``out``, renamed into place when complete."""
    folder = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=folder)
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            n = int(write(fh))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


@review.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(TASK_FORMATS),
    default="label-studio",
    show_default=True,
    help="Task file format: Label Studio's JSON import (tasks with pre-annotations).",
)
@limit_options
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Task file to write (default stdout).",
)
@click.option(
    "--config-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the labeling config (XML) for the model's classes here.",
)
@click.option(
    "--document-root",
    default=None,
    help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, for local image URLs "
    "[default: CATDOG_LABEL_STUDIO_DOCUMENT_ROOT, else /].",
)
def export_tasks(
    fmt: str,
    limit: int,
    audit: int | None,
    no_audit: bool,
    seed: int | None,
    out: Path | None,
    config_out: Path | None,
    document_root: str | None,
) -> None:
    """Write review tasks to a file for Label Studio, and mark them as under review.

    Images already under review or reviewed are never written again. Import the file in
    Label Studio (project settings: the labeling config from --config-out), review, export
    the project as JSON and read it back with `catdog review import`.
    """
    from catdog.db.models import ModelVersion
    from catdog.db.reviews import mark_pushed
    from catdog.review.select import by_reason
    from catdog.review.tasks import TaskError, label_config, task_for, write_tasks

    settings = get_settings()
    n_audit = audit_count(audit, no_audit)
    with sessions()() as session:
        chosen = choose_or_fail(session, limit, n_audit, seed)
        try:
            tasks = [task_for(c, settings, document_root=document_root) for c in chosen]
        except TaskError as exc:
            raise click.ClickException(str(exc)) from exc
        if config_out is not None:
            classes = production_classes(session)
            if chosen:  # the classes of the model whose labels are sent
                from sqlalchemy import select

                classes = session.scalars(
                    select(ModelVersion.classes).where(
                        ModelVersion.version == chosen[0].model_version
                    )
                ).one()
            if not classes:
                raise click.ClickException("no model classes known: cannot write --config-out")
            config = label_config([str(c) for c in classes])
            _write_atomically(config_out, lambda fh: fh.write(config))
        if out is None:
            write_tasks(tasks, sys.stdout)
        else:
            _write_atomically(out, lambda fh: write_tasks(tasks, fh))
        mark_pushed(
            session, chosen, "file", project=str(out.resolve()) if out is not None else "stdout"
        )
        session.commit()
    reasons = by_reason(chosen)
    click.echo(
        f"wrote {len(tasks)} tasks ({reasons.get('doubtful', 0)} doubtful, "
        f"{reasons.get('audit', 0)} audit)" + (f" to {out}" if out else ""),
        err=True,
    )


@review.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_answers(file: Path) -> None:
    """Read a Label Studio JSON export and store its answers as human labels.

    Importing the same file twice changes nothing; an annotation changed since updates the
    stored label. Skipped tasks and tasks with several answers stay out of training.
    """
    from catdog.review.labels import LabelsError, read_export, record

    try:
        tasks = read_export(file)
    except LabelsError as exc:
        raise click.ClickException(str(exc)) from exc
    with sessions()() as session:
        try:
            counts = record(session, tasks, "file", classes=production_classes(session))
        except LabelsError as exc:
            raise click.ClickException(f"{file}: {exc}") from exc
        session.commit()
    click.echo(counts.line())


def production_classes(session: Any) -> list[str] | None:
    """The classes of the model labeling images now (None when there is none)."""
    from catdog.db.registry import ModelNotFound, current_version

    try:
        return [str(c) for c in current_version(session, get_settings()).classes or []] or None
    except ModelNotFound:
        return None


@review.command("status")
def review_status() -> None:
    """What is under review, what came back, and the estimated accuracy of the rest."""
    from catdog.cli.pipeline import read_only_sessions
    from catdog.db.reviews import labels_in_use, summary
    from catdog.ops.status import review_lines

    with read_only_sessions(get_settings())() as session:
        for line in review_lines(summary(session, labels_in_use(session))):
            click.echo(line)
