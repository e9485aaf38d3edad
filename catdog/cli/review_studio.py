"""``catdog review push`` and ``catdog review pull``: the review loop with a Label Studio server.

Both attach themselves to the ``review`` group (catdog.cli.review). The server and its token
come from ``CATDOG_LABEL_STUDIO_URL`` and ``CATDOG_LABEL_STUDIO_TOKEN`` (or ``..._FILE``);
an unreachable server or a refused token is one line, and the token is never printed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
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
    from catdog.review.labels import RecordCounts
    from catdog.review.studio import LabelStudio

#: The Label Studio project catdog uses unless --project names another.
DEFAULT_PROJECT = "catdog review"
#: Task data key: when catdog signed the task's image URL (object stores only).
SIGNED_KEY = "catdog_signed"
#: A presigned image URL is signed again once it is this old: half its validity (a week,
#: catdog.review.tasks.SIGNED_URL_S), so a push or pull every few days keeps them all showing.
RESIGN_AFTER = timedelta(seconds=3.5 * 24 * 3600)

project_option = click.option(
    "--project",
    default=DEFAULT_PROJECT,
    show_default=True,
    help="Title of the Label Studio project (push creates it when missing).",
)


def client(settings: Settings) -> LabelStudio:
    """A client for the configured server, or one line saying what to set."""
    from catdog.review.studio import LabelStudio, StudioError

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


def _local_roots(candidates: Sequence[Any]) -> list[str]:
    """The local store roots of ``candidates``, as paths Label Studio sees."""
    from catdog.stores import decode_name, is_url

    return sorted(
        {posixpath.normpath(decode_name(c.store)) for c in candidates if not is_url(c.store)}
    )


def _one_local_url_per_root(
    candidates: Sequence[Any], tasks: Sequence[dict[str, Any]]
) -> list[str]:
    """The image URL of the first task of each local store root."""
    from catdog.review.tasks import IMAGE_NAME
    from catdog.stores import is_url

    first: dict[str, str] = {}
    for cand, task in zip(candidates, tasks, strict=True):
        if not is_url(cand.store):
            first.setdefault(cand.store, str(task["data"][IMAGE_NAME]))
    return list(first.values())


def _already_sent(
    in_project: dict[int, tuple[int, dict[str, Any]]], candidates: Sequence[Any]
) -> dict[int, int]:
    """Image id to task id for the candidates whose task is in the project already.

    A task counts only when its store and path are the candidate's too: another catdog
    database pushing to the same project has images with the same ids.
    """
    found = {}
    for cand in candidates:
        task_id, data = in_project.get(cand.image_id, (None, {}))
        if task_id is not None and (data.get("catdog_store"), data.get("catdog_path")) == (
            cand.store,
            cand.path,
        ):
            found[cand.image_id] = task_id
    return found


def _presigned(store: str) -> bool:
    """Whether images of ``store`` are shown by a presigned URL (object stores, not HTTP)."""
    from catdog.stores import is_url

    return is_url(store) and not store.startswith(("http://", "https://"))


def resign(studio: LabelStudio, in_project: dict[int, tuple[int, dict[str, Any]]]) -> int:
    """Sign again the image URLs of the project's tasks signed ``RESIGN_AFTER`` ago or more
    (they expire after a week); how many were."""
    from catdog.review.tasks import IMAGE_NAME, image_url

    now = datetime.now(UTC)
    done = 0
    for task_id, data in in_project.values():
        store, path, signed = (
            data.get("catdog_store"),
            data.get("catdog_path"),
            data.get(SIGNED_KEY),
        )
        if not (isinstance(store, str) and isinstance(path, str) and isinstance(signed, str)):
            continue
        try:
            fresh = now - datetime.fromisoformat(signed) < RESIGN_AFTER
        except (ValueError, TypeError):
            fresh = False  # unreadable: sign again
        if fresh or not _presigned(store):
            continue
        url = image_url(store, path)
        studio.update_task_data(task_id, {**data, IMAGE_NAME: url, SIGNED_KEY: now.isoformat()})
        done += 1
    return done


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
    from catdog.db.reviews import mark_pushed
    from catdog.review.select import by_reason
    from catdog.review.studio import IMPORT_BATCH, StudioError
    from catdog.review.tasks import TaskError, label_config, task_for

    settings = get_settings()
    n_audit = audit_count(audit, no_audit)
    studio = client(settings)
    console = stderr_console()
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
        signed = datetime.now(UTC).isoformat()
        for cand, task in zip(chosen, tasks, strict=True):
            if _presigned(cand.store):
                task["data"][SIGNED_KEY] = signed
        pushed = 0
        fresh: list[int] = []
        try:
            studio.whoami()
            target = studio.ensure_project(
                project, label_config(_classes(session, chosen[0].model_version))
            )
            for root in _local_roots(chosen):
                studio.connect_local_files(target.id, root)
            # One image per local root, fetched as a browser would: a server setting that is
            # off shows now, not as broken images in every task.
            for url in _one_local_url_per_root(chosen, tasks):
                studio.check_local_image(url)
            where = f"{studio.where}/projects/{target.id}"
            # Images whose task is in the project already (a push cut short between Label
            # Studio's answer and catdog's commit) are recorded with that task, not sent again.
            in_project = studio.image_tasks(target.id)
            resigned = resign(studio, in_project)
            present = _already_sent(in_project, chosen)
            again = [i for i, c in enumerate(chosen) if c.image_id in present]
            if again:
                mark_pushed(
                    session,
                    [chosen[i] for i in again],
                    "label-studio",
                    [present[chosen[i].image_id] for i in again],
                    project=where,
                )
                session.commit()
            fresh = [i for i, c in enumerate(chosen) if c.image_id not in present]
            with labeling_progress(console) as progress:
                bar = progress.add_task("importing tasks", total=len(fresh))
                for start in range(0, len(fresh), IMPORT_BATCH):
                    batch = fresh[start : start + IMPORT_BATCH]
                    ids = studio.import_tasks(target.id, [tasks[i] for i in batch])
                    # Recorded batch by batch: a failure later leaves what was sent recorded.
                    mark_pushed(
                        session, [chosen[i] for i in batch], "label-studio", ids, project=where
                    )
                    session.commit()
                    pushed += len(ids)
                    progress.update(bar, advance=len(ids))
        except StudioError as exc:
            done = f" ({pushed} of {len(fresh)} tasks were sent and recorded)" if pushed else ""
            raise click.ClickException(f"{exc}{done}") from None
    reasons = by_reason([chosen[i] for i in fresh])
    found = f"; {len(again)} were there already and are recorded" if again else ""
    if resigned:
        found += f"; {resigned} image URLs signed again"
    click.echo(
        f"pushed {pushed} tasks ({reasons.get('doubtful', 0)} doubtful, "
        f"{reasons.get('audit', 0)} audit) to {'new ' if target.created else ''}project "
        f"{project!r}: {where}{found}"
    )


@review.command("pull")
@project_option
def pull(project: str) -> None:
    """Store Label Studio's answers as human labels.

    Pulling twice changes nothing; an annotation changed since updates the stored label.
    Skipped tasks and tasks with conflicting answers stay out of training.
    """
    from catdog.review.labels import LabelsError, RecordCounts, record
    from catdog.review.studio import StudioError

    settings = get_settings()
    studio = client(settings)
    console = stderr_console()
    total = RecordCounts()
    with sessions()() as session, studio:
        try:
            found = studio.find_project(project)
            if found is None:
                raise click.ClickException(
                    f"Label Studio at {studio.where} has no project {project!r} "
                    "(`catdog review push` creates it)"
                )
            classes = production_classes(session)
            resigned = resign(studio, studio.image_tasks(int(found["id"])))
            with labeling_progress(console) as progress:
                bar = progress.add_task("reading answers", total=None)
                for tasks, looked, project_tasks in studio.answered(int(found["id"])):
                    # One commit per batch: a pull cut short keeps what it read.
                    counts = record(session, tasks, "label-studio", classes=classes)
                    session.commit()
                    # The export leaves out the tasks nobody answered yet.
                    counts.tasks += looked - len(tasks)
                    counts.unanswered += looked - len(tasks)
                    _add(total, counts)
                    progress.update(bar, total=project_tasks, advance=looked)
        except (StudioError, LabelsError) as exc:
            raise click.ClickException(str(exc)) from None
    again = f"; {resigned} image URLs signed again" if resigned else ""
    click.echo(f"{project!r}: {total.line()}{again}")


def _add(total: RecordCounts, more: RecordCounts) -> None:
    """Add one page's counts to the running total."""
    from dataclasses import fields

    for f in fields(more):
        value = getattr(more, f.name)
        if isinstance(value, dict):
            mine = getattr(total, f.name)
            for key, n in value.items():
                mine[key] = mine.get(key, 0) + n
        else:
            setattr(total, f.name, getattr(total, f.name) + value)
