"""``catdog review push`` and ``catdog review pull``: the review loop with a Label Studio server.

Both attach themselves to the ``review`` group (catdog.cli.review). The server and its token
come from ``CATDOG_LABEL_STUDIO_URL`` and ``CATDOG_LABEL_STUDIO_TOKEN`` (or ``..._FILE``);
an unreachable server or a refused token is one line, and the token is never printed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from catdog.cli.progress import labeling_progress, stderr_console
from catdog.cli.review import (
    audit_count,
    choose_or_fail,
    limit_options,
    production_classes,
    review,
    sessions,
)
from catdog.settings import Settings, get_settings

if TYPE_CHECKING:
    from catdog.review.studio import LabelStudio

#: The Label Studio project catdog uses unless --project names another.
DEFAULT_PROJECT = "catdog review"

project_option = click.option(
    "--project",
    default=DEFAULT_PROJECT,
    show_default=True,
    help="Title of the Label Studio project (push creates it when missing).",
)


def client(settings: Settings) -> LabelStudio:
    """A client for the configured server, or one line saying what to set."""
    try:
        from catdog.review.studio import LabelStudio, StudioError
    except ModuleNotFoundError as exc:  # an install without the HTTP client
        raise click.ClickException(
            f"review push/pull need the {exc.name!r} package: pip install {exc.name}"
        ) from exc

    if not settings.label_studio_url:
        raise click.ClickException(
            "no Label Studio server: set CATDOG_LABEL_STUDIO_URL (without a server, use "
            "`catdog review export` and `catdog review import`)"
        )
    if settings.label_studio_token is None:
        raise click.ClickException(
            "no Label Studio token: set CATDOG_LABEL_STUDIO_TOKEN or CATDOG_LABEL_STUDIO_TOKEN_FILE"
        )
    try:
        return LabelStudio(
            settings.label_studio_url, settings.label_studio_token.get_secret_value()
        )
    except StudioError as exc:
        raise click.ClickException(str(exc)) from None


def _classes(session: Any, version: str) -> list[str]:
    from sqlalchemy import select

    from catdog.db.models import ModelVersion

    classes = session.scalars(
        select(ModelVersion.classes).where(ModelVersion.version == version)
    ).one()
    return [str(c) for c in classes or []]


@review.command("push")
@limit_options
@project_option
def push(limit: int, audit: int | None, no_audit: bool, seed: int | None, project: str) -> None:
    """Send doubtful labels (and an audit sample) to Label Studio as tasks to review.

    Each task shows the image and catdog's label as a pre-annotation, so a reviewer mostly
    confirms with one key. Images already under review or reviewed are never sent again.
    Local images are served by Label Studio's local files (see docs/review.md); object
    store images by presigned URLs.
    """
    settings = get_settings()
    n_audit = audit_count(audit, no_audit)
    studio = client(settings)
    from catdog.review import sync
    from catdog.review.studio import StudioError
    from catdog.review.tasks import TaskError, label_config, task_for

    with sessions()() as session, studio:
        chosen = choose_or_fail(session, limit, n_audit, seed)
        if not chosen:
            click.echo(
                "nothing to review: every label is reviewed, under review, or failed", err=True
            )
            return
        try:
            # Every URL first: an image Label Studio could not show stops the push before
            # anything is sent.
            tasks = [task_for(c, settings) for c in chosen]
        except TaskError as exc:
            raise click.ClickException(str(exc)) from exc
        sync.stamp_signed(chosen, tasks)
        config = label_config(_classes(session, chosen[0].model_version))
        try:
            with _bar("importing tasks") as progress:
                done = sync.push(session, studio, chosen, tasks, project, config, progress)
        except StudioError as exc:
            raise click.ClickException(str(exc)) from None
    notes = f"; {done.found} were there already and are recorded" if done.found else ""
    if done.resigned:
        notes += f"; {done.resigned} image URLs signed again"
    click.echo(
        f"pushed {sum(done.sent.values())} tasks ({done.sent.get('doubtful', 0)} doubtful, "
        f"{done.sent.get('audit', 0)} audit) to {'new ' if done.created else ''}project "
        f"{project!r}: {done.where}{notes}"
    )


@review.command("pull")
@project_option
def pull(project: str) -> None:
    """Store Label Studio's answers as human labels.

    Pulling twice changes nothing; an annotation changed since updates the stored label.
    Skipped tasks and tasks with conflicting answers stay out of training.
    """
    studio = client(get_settings())
    from catdog.review import sync
    from catdog.review.labels import LabelsError
    from catdog.review.studio import StudioError

    with sessions()() as session, studio:
        try:
            found = studio.find_project(project)
            if found is None:
                raise click.ClickException(
                    f"Label Studio at {studio.where} has no project {project!r} "
                    "(`catdog review push` creates it)"
                )
            classes = production_classes(session)
            with _bar("reading answers") as progress:
                counts, resigned = sync.pull(session, studio, int(found["id"]), classes, progress)
        except (StudioError, LabelsError) as exc:
            raise click.ClickException(str(exc)) from None
    again = f"; {resigned} image URLs signed again" if resigned else ""
    click.echo(f"{project!r}: {counts.line()}{again}")


@contextmanager
def _bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (terminals only), driven by (done, total) calls."""
    with labeling_progress(stderr_console()) as progress:
        task = progress.add_task(what, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)
