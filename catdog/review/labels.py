"""Reviewers' answers from Label Studio, stored as human labels.

One parser serves both ways answers come back: a JSON export file (``catdog review import``)
and tasks fetched through the API (``catdog review pull``); both are lists of tasks with
their ``annotations``. Each task must carry ``data.catdog_image_id`` (catdog's tasks do).

Per task, the annotations that were not cancelled are read:

* one label among them (one annotator, or several who agree): **labeled**;
* several different labels (one annotation with several choices, or annotators who
  disagree): **ambiguous**, kept out of training;
* only cancelled (skipped) annotations, or answers without a choice: **skipped**, kept out
  of training;
* no annotation at all: not answered yet, nothing stored.

Storing is idempotent: the same export twice changes nothing, and an annotation edited
since (another label, a newer update time) replaces the stored answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from catdog.db.queries import image_locations
from catdog.db.reviews import Answer, save_answers
from catdog.review.tasks import CHOICES_NAME

#: Where answers came from (``human_labels.source``).
SOURCES = ("label-studio", "file")


class LabelsError(ValueError):
    """A file or payload that is not a Label Studio JSON export (one line)."""


@dataclass(slots=True)
class RecordCounts:
    """What ``record`` found and did."""

    tasks: int = 0
    #: Answers by outcome.
    labeled: int = 0
    skipped: int = 0
    ambiguous: int = 0
    #: Tasks nobody has answered yet.
    unanswered: int = 0
    #: Tasks without a usable ``catdog_image_id`` (not made by catdog).
    foreign: int = 0
    #: Answers stored as new, changed, or already stored as they are.
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Answers for images this database does not have (deleted since, or another database).
    unknown: int = 0
    #: Labels that are none of the model's classes (stored, never trained on).
    other_labels: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """A one-line summary for the command line."""
        parts = [
            f"{self.tasks} tasks: {self.labeled} labeled, {self.skipped} skipped, "
            f"{self.ambiguous} ambiguous, {self.unanswered} not answered yet",
            f"stored {self.created} new, {self.updated} changed, {self.unchanged} unchanged",
        ]
        if self.unknown:
            parts.append(f"{self.unknown} for images this database does not have")
        if self.foreign:
            parts.append(f"{self.foreign} tasks without a catdog image id ignored")
        if self.other_labels:
            other = ", ".join(f"{k!r} x{v}" for k, v in sorted(self.other_labels.items()))
            parts.append(f"labels outside the model's classes (not trained on): {other}")
        return "; ".join(parts)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _annotator(annotation: dict[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return None if who is None else str(who)[:255]


def _choices(annotation: dict[str, Any]) -> list[str]:
    """The choices an annotation selected (our config's control first, any other after)."""
    picked: list[str] = []
    results = annotation.get("result") or []
    if not isinstance(results, list):
        return picked
    ours = [r for r in results if isinstance(r, dict) and r.get("from_name") == CHOICES_NAME]
    others = [r for r in results if isinstance(r, dict) and r not in ours]
    for r in ours or others:
        if r.get("type") != "choices":
            continue
        for choice in (r.get("value") or {}).get("choices") or []:
            if isinstance(choice, str) and choice not in picked:
                picked.append(choice)
    return picked


def _image_id(task: dict[str, Any]) -> int | None:
    data = task.get("data")
    value = data.get("catdog_image_id") if isinstance(data, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _location(task: dict[str, Any]) -> tuple[str, str] | None:
    """The (store, path) a catdog task names, or None for tasks made before it named them."""
    data = task.get("data")
    store = data.get("catdog_store") if isinstance(data, dict) else None
    path = data.get("catdog_path") if isinstance(data, dict) else None
    return (store, path) if isinstance(store, str) and isinstance(path, str) else None


def _task_id(task: dict[str, Any]) -> int | None:
    value = task.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _newest_first(annotation: dict[str, Any]) -> tuple[datetime, int]:
    when = _time(annotation.get("updated_at")) or _time(annotation.get("created_at"))
    ident = annotation.get("id")
    return (when or datetime.min.replace(tzinfo=UTC), ident if isinstance(ident, int) else 0)


def answer_of(task: dict[str, Any]) -> Answer | None:
    """The answer a task holds, or None when nobody answered it (or it is not catdog's)."""
    image_id = _image_id(task)
    if image_id is None:
        return None
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    if not annotations:
        return None
    kept = [a for a in annotations if not a.get("was_cancelled")]
    # Who and when: the newest annotation that counts (the newest skip when none does).
    latest = max(kept or annotations, key=_newest_first)
    labels: list[str] = []
    for a in kept:
        labels.extend(c for c in _choices(a) if c not in labels)
    if len(labels) == 1:
        outcome, label = "labeled", labels[0]
    elif labels:
        outcome, label = "ambiguous", None
    else:
        outcome, label = "skipped", None
    annotation_id = latest.get("id")
    return Answer(
        image_id=image_id,
        label=label,
        outcome=outcome,
        annotator=_annotator(latest),
        annotated=_time(latest.get("updated_at")) or _time(latest.get("created_at")),
        task_id=_task_id(task),
        annotation_id=annotation_id if isinstance(annotation_id, int) else None,
    )


def record(
    session: Session,
    exported_tasks: Sequence[dict[str, Any]],
    source: str,
    classes: Sequence[str] | None = None,
) -> RecordCounts:
    """Store the answers in ``exported_tasks`` as human labels; the caller commits."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    if not isinstance(exported_tasks, list | tuple):
        raise LabelsError("a Label Studio JSON export is a list of tasks")
    counts = RecordCounts(tasks=len(exported_tasks))
    answers: dict[int, Answer] = {}
    named: dict[int, tuple[str, str]] = {}
    for task in exported_tasks:
        if not isinstance(task, dict):
            raise LabelsError("a Label Studio JSON export is a list of tasks (objects)")
        if _image_id(task) is None:
            counts.foreign += 1
            continue
        answer = answer_of(task)
        if answer is None:
            counts.unanswered += 1
            continue
        answers[answer.image_id] = answer  # a task listed twice: the later one wins
        location = _location(task)
        if location is not None:
            named[answer.image_id] = location
        setattr(counts, answer.outcome, getattr(counts, answer.outcome) + 1)
        if answer.label is not None and classes is not None and answer.label not in classes:
            counts.other_labels[answer.label] = counts.other_labels.get(answer.label, 0) + 1
    # Another catdog database sharing the project numbers its images alike: an answer for a
    # task naming another file than this database's image of that id is not ours.
    here = image_locations(session, list(named))
    theirs = [i for i, location in named.items() if here.get(i, location) != location]
    for image_id in theirs:
        del answers[image_id]
    saved = save_answers(session, list(answers.values()), source)
    counts.created, counts.updated = saved.created, saved.updated
    counts.unchanged, counts.unknown = saved.unchanged, saved.unknown + len(theirs)
    return counts


def read_export(path: Path) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export file, or one line saying why not."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read {path}: {exc}") from exc
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(
            f"{path} is not JSON (line {exc.lineno}): export the project as 'JSON' in Label Studio"
        ) from exc
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise LabelsError(f"{path} is not a Label Studio JSON export (a list of tasks)")
    return tasks
