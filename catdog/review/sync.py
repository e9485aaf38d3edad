"""The review loop with a Label Studio server: push chosen images as tasks, pull answers.

``catdog review push`` and ``pull`` (catdog.cli.review_studio) are a thin layer over
:func:`push` and :func:`pull`, which take a database session and a
:class:`~catdog.review.studio.LabelStudio` client and commit as they go: a push records
each imported batch of tasks, a pull each batch of answers, so either cut short keeps what
it did. A push never sends an image twice, even one whose task Label Studio took just
before catdog could record it; presigned image URLs are signed again before they expire.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from catdog.db.reviews import Candidate, mark_pushed
from catdog.review.labels import RecordCounts, record
from catdog.review.studio import IMPORT_BATCH, LabelStudio, StudioError
from catdog.review.tasks import IMAGE_NAME, image_url
from catdog.stores import decode_name, is_url

#: Task data key: when catdog signed the task's image URL (object stores only).
SIGNED_KEY = "catdog_signed"
#: A presigned image URL is signed again once it is this old: half its validity (a week,
#: catdog.review.tasks.SIGNED_URL_S), so a push or pull every few days keeps them all showing.
RESIGN_AFTER = timedelta(days=3.5)

#: Progress callback: (done so far in this step, the step's total).
Progress = Callable[[int, int], None]


@dataclass
class Pushed:
    """What :func:`push` did."""

    #: The project's address, e.g. ``http://host:8080/projects/3``.
    where: str
    #: Whether this push created the project.
    created: bool
    #: Tasks imported, by reason ('doubtful', 'audit').
    sent: dict[str, int] = field(default_factory=dict)
    #: Images whose task was in the project already (recorded, not sent again).
    found: int = 0
    #: Image URLs signed again.
    resigned: int = 0


def presigned(store: str) -> bool:
    """Whether images of ``store`` are shown by a presigned URL (object stores, not HTTP)."""
    return is_url(store) and not store.startswith(("http://", "https://"))


def stamp_signed(candidates: Sequence[Candidate], tasks: Sequence[dict[str, Any]]) -> None:
    """Record in each object-store task when its image URL was signed (now)."""
    signed = datetime.now(UTC).isoformat()
    for cand, task in zip(candidates, tasks, strict=True):
        if presigned(cand.store):
            task["data"][SIGNED_KEY] = signed


def resign(studio: LabelStudio, in_project: dict[int, tuple[int, dict[str, Any]]]) -> int:
    """Sign again the image URLs of the project's tasks signed ``RESIGN_AFTER`` ago or more
    (they expire after a week); how many were."""
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
            fresh = False  # unreadable, or without a time zone: sign again
        if fresh or not presigned(store):
            continue
        url = image_url(store, path)
        studio.update_task_data(task_id, {**data, IMAGE_NAME: url, SIGNED_KEY: now.isoformat()})
        done += 1
    return done


def local_roots(candidates: Sequence[Candidate]) -> list[str]:
    """The local store roots of ``candidates``, as paths Label Studio sees."""
    return sorted(
        {posixpath.normpath(decode_name(c.store)) for c in candidates if not is_url(c.store)}
    )


def one_local_url_per_root(
    candidates: Sequence[Candidate], tasks: Sequence[dict[str, Any]]
) -> list[str]:
    """The image URL of the first task of each local store root."""
    first: dict[str, str] = {}
    for cand, task in zip(candidates, tasks, strict=True):
        if not is_url(cand.store):
            first.setdefault(cand.store, str(task["data"][IMAGE_NAME]))
    return list(first.values())


def already_sent(
    in_project: dict[int, tuple[int, dict[str, Any]]], candidates: Sequence[Candidate]
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


def push(
    session: Session,
    studio: LabelStudio,
    candidates: Sequence[Candidate],
    tasks: Sequence[dict[str, Any]],
    title: str,
    label_config: str,
    progress: Progress | None = None,
) -> Pushed:
    """Send ``tasks`` (one per candidate, same order) to the project titled ``title``.

    The project is created or reused, a local-files storage connected per local root and
    one image per root fetched as a browser would, before any task is imported. Raises
    :class:`StudioError` (one line, saying how many tasks were sent and recorded before).
    """
    studio.whoami()
    target = studio.ensure_project(title, label_config)
    for root in local_roots(candidates):
        studio.connect_local_files(target.id, root)
    # A server setting that is off shows now, not as broken images in every task.
    for url in one_local_url_per_root(candidates, tasks):
        studio.check_local_image(url)
    done = Pushed(where=f"{studio.where}/projects/{target.id}", created=target.created)
    in_project = studio.image_tasks(target.id)
    done.resigned = resign(studio, in_project)
    present = already_sent(in_project, candidates)
    if present:
        again = [c for c in candidates if c.image_id in present]
        found_ids: list[int | None] = [present[c.image_id] for c in again]
        mark_pushed(session, again, "label-studio", found_ids, project=done.where)
        session.commit()
        done.found = len(again)
    fresh = [(c, t) for c, t in zip(candidates, tasks, strict=True) if c.image_id not in present]
    sent = 0
    for start in range(0, len(fresh), IMPORT_BATCH):
        batch = fresh[start : start + IMPORT_BATCH]
        try:
            ids = studio.import_tasks(target.id, [t for _, t in batch])
        except StudioError as exc:
            if not sent:
                raise
            raise StudioError(
                f"{exc} ({sent} of {len(fresh)} tasks were sent and recorded)"
            ) from exc
        # Recorded batch by batch: a failure later leaves what was sent recorded.
        mark_pushed(session, [c for c, _ in batch], "label-studio", ids, project=done.where)
        session.commit()
        sent += len(batch)
        for cand, _ in batch:
            done.sent[cand.reason] = done.sent.get(cand.reason, 0) + 1
        if progress is not None:
            progress(sent, len(fresh))
    return done


def pull(
    session: Session,
    studio: LabelStudio,
    project_id: int,
    classes: Sequence[str] | None,
    progress: Progress | None = None,
) -> tuple[RecordCounts, int]:
    """Store the project's answers as human labels; the counts, and how many image URLs
    were signed again."""
    resigned = resign(studio, studio.image_tasks(project_id))
    total = RecordCounts()
    looked_at = 0
    for tasks, looked, project_tasks in studio.answered(project_id):
        counts = record(session, tasks, "label-studio", classes=classes)
        session.commit()  # one commit per batch: a pull cut short keeps what it read
        # The export leaves out the tasks nobody answered yet.
        counts.tasks += looked - len(tasks)
        counts.unanswered += looked - len(tasks)
        _add(total, counts)
        looked_at += looked
        if progress is not None:
            progress(looked_at, project_tasks)
    return total, resigned


def _add(total: RecordCounts, more: RecordCounts) -> None:
    """Add one batch's counts to the running total."""
    for f in fields(more):
        value = getattr(more, f.name)
        if isinstance(value, dict):
            mine = getattr(total, f.name)
            for key, n in value.items():
                mine[key] = mine.get(key, 0) + n
        else:
            setattr(total, f.name, getattr(total, f.name) + value)
