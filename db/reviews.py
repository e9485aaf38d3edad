"""Human review in the database: what was sent to people, and the labels they gave.

The review feature (``catdog.review``) chooses and formats; training reads human labels from
here. A model never writes ``human_labels``: relabeling cannot overwrite a person's answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any, TypeVar

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from catdog.db.models import HumanLabel, Image, ModelVersion, Prediction, ReviewItem, utcnow
from catdog.db.queries import IN_CHUNK

_T = TypeVar("_T", ReviewItem, HumanLabel)

#: Why an image was chosen: the model was unsure, or a random confident label to audit.
REASONS = ("doubtful", "audit")
#: Where review tasks went.
DESTINATIONS = ("label-studio", "file")
#: What a reviewer's answer amounts to; only 'labeled' goes into training.
OUTCOMES = ("labeled", "skipped", "ambiguous")
#: A review item's status before any answer came back.
PENDING = "pending"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An image chosen for review with the production model's label of it."""

    image_id: int
    store: str
    path: str
    reason: str
    label: str
    confidence: float
    #: Largest minus second largest class probability (1.0 when unknown).
    margin: float
    model_version: str
    probabilities: dict[str, float] | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """One reviewer's answer for one image, parsed from Label Studio."""

    image_id: int
    label: str | None
    outcome: str
    annotator: str | None = None
    annotated: datetime | None = None
    task_id: int | None = None
    annotation_id: int | None = None


@dataclass(frozen=True, slots=True)
class HumanRow:
    """A usable human label with its image's location (what training reads)."""

    image_id: int
    store: str
    path: str
    label: str


def _rows(session: Session, table: type[_T], image_ids: Sequence[int]) -> list[_T]:
    """Rows of a review table for ``image_ids``, asked in chunks (SQLite's variable limit)."""
    out: list[_T] = []
    for start in range(0, len(image_ids), IN_CHUNK):
        chunk = image_ids[start : start + IN_CHUNK]
        out.extend(session.scalars(select(table).where(table.image_id.in_(chunk))))
    return out


def mark_pushed(
    session: Session,
    candidates: Sequence[Candidate],
    destination: str,
    task_ids: Sequence[int | None] | None = None,
    project: str | None = None,
) -> int:
    """Record that ``candidates`` were sent to ``destination``; return how many are new.

    ``task_ids`` (same order as ``candidates``) are Label Studio's task ids when known. An
    image already recorded keeps its first row, but gains a task id it lacked.
    """
    if destination not in DESTINATIONS:
        raise ValueError(f"unknown review destination {destination!r}")
    ids = list(task_ids) if task_ids is not None else [None] * len(candidates)
    if len(ids) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(ids)} task ids")
    known = {
        item.image_id: item for item in _rows(session, ReviewItem, [c.image_id for c in candidates])
    }
    now = utcnow()
    new = 0
    for cand, task_id in zip(candidates, ids, strict=True):
        if cand.reason not in REASONS:
            raise ValueError(f"unknown review reason {cand.reason!r}")
        item = known.get(cand.image_id)
        if item is not None:
            if item.task_id is None and task_id is not None:
                item.task_id = task_id
            continue
        item = ReviewItem(
            image_id=cand.image_id,
            reason=cand.reason,
            predicted_label=cand.label,
            confidence=cand.confidence,
            model_version=cand.model_version,
            sha256=cand.sha256,
            destination=destination,
            project=project,
            task_id=task_id,
            pushed=now,
            status=PENDING,
        )
        session.add(item)
        known[cand.image_id] = item
        new += 1
    session.flush()
    return new


@dataclass(frozen=True, slots=True)
class Saved:
    """What ``save_answers`` did."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Answers for images catdog does not know (deleted, or another database's tasks).
    unknown: int = 0


def save_answers(session: Session, answers: Sequence[Answer], source: str) -> Saved:
    """Store reviewers' answers, one human label per image, idempotently.

    The same answer twice changes nothing; a different answer (another label, a newer
    annotation) replaces the stored one. The image's review item, if any, takes the outcome.
    """
    for a in answers:
        if a.outcome not in OUTCOMES:
            raise ValueError(f"unknown review outcome {a.outcome!r}")
        if (a.label is None) != (a.outcome != "labeled"):
            raise ValueError(f"image {a.image_id}: outcome {a.outcome!r} with label {a.label!r}")
    wanted = [a.image_id for a in answers]
    images: set[int] = set()
    for start in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[start : start + IN_CHUNK]
        images.update(session.scalars(select(Image.id).where(Image.id.in_(chunk))))
    stored = {h.image_id: h for h in _rows(session, HumanLabel, wanted)}
    items = {r.image_id: r for r in _rows(session, ReviewItem, wanted)}
    created = updated = unchanged = unknown = 0
    now = utcnow()
    for a in answers:
        if a.image_id not in images:
            unknown += 1
            continue
        values = {
            "label": a.label,
            "outcome": a.outcome,
            "annotator": a.annotator,
            "annotated": a.annotated,
            "task_id": a.task_id,
            "annotation_id": a.annotation_id,
            "source": source,
        }
        row = stored.get(a.image_id)
        if row is None:
            row = HumanLabel(image_id=a.image_id, updated=now, **values)
            session.add(row)
            stored[a.image_id] = row
            created += 1
        elif _same(row, a):
            unchanged += 1
        else:
            for key, value in values.items():
                setattr(row, key, value)
            row.updated = now
            updated += 1
        item = items.get(a.image_id)
        if item is not None:
            item.status = a.outcome
            if item.task_id is None:
                item.task_id = a.task_id
    session.flush()
    return Saved(created, updated, unchanged, unknown)


def _same(row: HumanLabel, a: Answer) -> bool:
    """Whether a stored label already says what the answer says (the annotator's edits count)."""
    return (
        row.label == a.label
        and row.outcome == a.outcome
        and row.annotator == a.annotator
        and row.annotation_id == a.annotation_id
        and _instant(row.annotated) == _instant(a.annotated)
    )


def _instant(ts: datetime | None) -> float | None:
    """Compare times across SQLite (naive, UTC) and PostgreSQL (aware)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def training_labels(session: Session, classes: Sequence[str] | None = None) -> list[HumanRow]:
    """Usable human labels (outcome 'labeled'), with image locations, ordered by image id.

    With ``classes``, a label outside them is left out (a project configured differently).
    """
    query = (
        select(HumanLabel.image_id, Image.store, Image.path, HumanLabel.label)
        .join(Image, Image.id == HumanLabel.image_id)
        .where(HumanLabel.outcome == "labeled")
        .order_by(HumanLabel.image_id)
    )
    rows = [HumanRow(i, s, p, lbl) for i, s, p, lbl in session.execute(query) if lbl is not None]
    if classes is not None:
        rows = [r for r in rows if r.label in classes]
    return rows


def outcome_counts(session: Session) -> dict[str, int]:
    """Human labels per outcome ('labeled', 'skipped', 'ambiguous')."""
    rows = session.execute(select(HumanLabel.outcome, func.count()).group_by(HumanLabel.outcome))
    counts = dict.fromkeys(OUTCOMES, 0)
    counts.update({outcome: n for outcome, n in rows})
    return counts


def pending_count(session: Session) -> int:
    """Images sent for review without an answer yet."""
    return (
        session.scalar(
            select(func.count()).select_from(ReviewItem).where(ReviewItem.status == PENDING)
        )
        or 0
    )


#: Audit answers below this many make the accuracy estimate too rough to act on.
MIN_AUDIT = 30
#: Confidence level of the interval on the estimated accuracy.
CONFIDENCE_LEVEL = 0.95


def wilson(successes: int, n: int, level: float = CONFIDENCE_LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (good at small n and near 0 or 1)."""
    if n <= 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True, slots=True)
class Summary:
    """Where human review stands (``status``, ``report``, ``review status``)."""

    #: Review items without an answer yet.
    pending: int
    #: Human labels per outcome ('labeled', 'skipped', 'ambiguous').
    outcomes: dict[str, int]
    #: Labeled answers that disagree / agree with the model's label at the time they were sent.
    changed: int
    confirmed: int
    #: Whose labels the audit estimate describes (None: no version given).
    version: str | None
    #: Audit answers (labeled) for ``version``, and how many agreed with the model.
    audit_n: int
    audit_correct: int

    @property
    def human(self) -> int:
        """Images with a usable human label."""
        return self.outcomes.get("labeled", 0)

    @property
    def accuracy(self) -> float | None:
        """Estimated accuracy of the unreviewed labels (None without audit answers)."""
        return self.audit_correct / self.audit_n if self.audit_n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of ``accuracy``."""
        return wilson(self.audit_correct, self.audit_n) if self.audit_n else None

    @property
    def too_small(self) -> bool:
        """Whether the audit sample is below ``MIN_AUDIT`` answers."""
        return self.audit_n < MIN_AUDIT


def summary(session: Session, version: str | None = None) -> Summary:
    """Counts of review work and answers, and the audit sample of ``version``'s labels."""
    answered = (
        select(
            ReviewItem.reason,
            ReviewItem.model_version,
            ReviewItem.predicted_label,
            HumanLabel.label,
        )
        .join(HumanLabel, HumanLabel.image_id == ReviewItem.image_id)
        .where(HumanLabel.outcome == "labeled")
    )
    changed = confirmed = audit_n = audit_correct = 0
    for reason, model_version, predicted, human in session.execute(answered):
        agree = predicted == human
        changed += not agree
        confirmed += agree
        if reason == "audit" and version is not None and model_version == version:
            audit_n += 1
            audit_correct += agree
    return Summary(
        pending=pending_count(session),
        outcomes=outcome_counts(session),
        changed=changed,
        confirmed=confirmed,
        version=version,
        audit_n=audit_n,
        audit_correct=audit_correct,
    )


def human_label_column() -> ColumnElement[str | None]:
    """The usable human label of a row's image, NULL when none: for selects that join
    ``Image`` and ``Prediction`` (the export rows) after :func:`join_human_labels`.

    A human label describes the bytes the reviewer saw: when the file changed since (the
    prediction read another hash than the one sent for review), it no longer applies.
    """
    still_same = or_(
        ReviewItem.sha256.is_(None),
        Prediction.sha256.is_(None),
        ReviewItem.sha256 == Prediction.sha256,
    )
    return case((still_same, HumanLabel.label), else_=None).label("human_label")


def join_human_labels(stmt: Select[*tuple[Any, ...]]) -> Select[*tuple[Any, ...]]:
    """``stmt`` (rows of ``Image`` with their ``Prediction``) with ``human_label`` added."""
    return (
        stmt.outerjoin(
            HumanLabel, and_(HumanLabel.image_id == Image.id, HumanLabel.outcome == "labeled")
        )
        .outerjoin(ReviewItem, ReviewItem.image_id == Image.id)
        .add_columns(human_label_column())
    )


def labels_in_use(session: Session) -> str | None:
    """The version whose labels the audit estimate describes: production, else the version
    whose labels were last sent for review (the bundled model's before any promotion)."""
    prod = session.scalars(select(ModelVersion.version).where(ModelVersion.is_production)).first()
    if prod is not None:
        return prod
    return session.scalars(
        select(ReviewItem.model_version).order_by(ReviewItem.pushed.desc(), ReviewItem.id.desc())
    ).first()
