"""The few queries that matter: registration, bulk upsert, progress counters, export."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.models import Image, ModelVersion, Prediction, ScanRun, utcnow

#: Parameters per IN (...) list; well under SQLite's 32,766 variable limit.
IN_CHUNK = 5000


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file found by the producer, relative to its store root."""

    path: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a worker found for one image: a label or an error, never both."""

    image_id: int
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None


def _insert(session: Session) -> Any:
    """The dialect's INSERT construct, which knows ON CONFLICT."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"catdog supports PostgreSQL and SQLite, not {name}")


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def register_images(
    session: Session,
    store: str,
    entries: Sequence[FileEntry],
    model_version_id: int,
    relabel: bool = False,
    retry_failed: bool = False,
) -> tuple[list[int], list[int]]:
    """Register files of one store; return (ids that need labeling, ids skipped as done).

    An image is skipped when it is unchanged since registration and already has a result: by
    any model, or with ``relabel`` by ``model_version_id`` itself. A recorded failure counts as
    a result (a broken file stays broken) unless ``retry_failed``. A changed file (size or
    mtime) loses its old predictions, which described other pixels.
    """
    by_path = {e.path: e for e in entries}
    known: dict[str, tuple[int, int, float]] = {}
    for chunk in _chunks(list(by_path)):
        rows = session.execute(
            select(Image.path, Image.id, Image.size, Image.mtime).where(
                Image.store == store, Image.path.in_(chunk)
            )
        )
        known.update({path: (id_, size, mtime) for path, id_, size, mtime in rows})

    new = [e for p, e in by_path.items() if p not in known]
    changed = [
        (known[e.path][0], e)
        for e in entries
        if e.path in known and (known[e.path][1], known[e.path][2]) != (e.size, e.mtime)
    ]
    ids: list[int] = []
    if new:
        stmt = (
            _insert(session)(Image)
            .values(
                [{"store": store, "path": e.path, "size": e.size, "mtime": e.mtime} for e in new]
            )
            .on_conflict_do_nothing(index_elements=["store", "path"])
            .returning(Image.id)
        )
        ids.extend(session.scalars(stmt))
    if changed:
        changed_ids = [id_ for id_, _ in changed]
        session.execute(
            update(Image),
            [{"id": id_, "size": e.size, "mtime": e.mtime, "sha256": None} for id_, e in changed],
        )
        for chunk in _chunks(changed_ids):
            session.execute(delete(Prediction).where(Prediction.image_id.in_(chunk)))
        ids.extend(changed_ids)

    changed_paths = {e.path for _, e in changed}
    unchanged = [known[p][0] for p in known if p not in changed_paths]
    labeled: set[int] = set()
    for chunk in _chunks(unchanged):
        cond: list[ColumnElement[bool]] = [Prediction.image_id.in_(chunk)]
        if retry_failed:
            cond.append(Prediction.error.is_(None))
        if relabel:
            cond.append(Prediction.model_version_id == model_version_id)
        labeled.update(session.scalars(select(Prediction.image_id).where(and_(*cond))))
    ids.extend(i for i in unchanged if i not in labeled)
    return ids, [i for i in unchanged if i in labeled]


def image_locations(session: Session, image_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """Map image id to (store, relative path)."""
    out: dict[int, tuple[str, str]] = {}
    for chunk in _chunks(list(image_ids)):
        rows = session.execute(select(Image.id, Image.store, Image.path).where(Image.id.in_(chunk)))
        out.update({id_: (store, path) for id_, store, path in rows})
    return out


def _upsert_statement(session: Session) -> Any:
    """INSERT ... ON CONFLICT for predictions, built once per dialect (compiled once, cached)."""
    name = session.get_bind().dialect.name
    if name not in _UPSERTS:
        table = Prediction.__table__
        stmt = _insert(session)(table)
        ex = stmt.excluded
        _UPSERTS[name] = stmt.on_conflict_do_update(
            index_elements=["image_id", "model_version_id"],
            set_={
                c: ex[c]
                for c in ("run_id", "label", "confidence", "probabilities", "error", "created")
            },
            # Only a different run may overwrite: a redelivery within the same run is a no-op.
            where=table.c.run_id.is_distinct_from(ex.run_id),
        ).returning(table.c.error)
    return _UPSERTS[name]


_UPSERTS: dict[str, Any] = {}

# PostgreSQL: one statement whose rows travel as one JSON document, unpacked by the server
# (json_to_recordset). The query text never changes, so it is parsed once, and encoding one
# JSON string is far cheaper in Python than adapting thousands of parameters (20k+ rows/s).
_PG_UPSERT = text(
    """
    INSERT INTO predictions
        (image_id, model_version_id, run_id, label, confidence, probabilities, error, created)
    SELECT r.image_id, r.model_version_id, r.run_id, r.label, r.confidence,
           r.probabilities, r.error, r.created
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        image_id bigint, model_version_id integer, run_id integer, label varchar,
        confidence double precision, probabilities json, error text, created timestamptz)
    ON CONFLICT (image_id, model_version_id) DO UPDATE SET
        run_id = excluded.run_id, label = excluded.label, confidence = excluded.confidence,
        probabilities = excluded.probabilities, error = excluded.error,
        created = excluded.created
    WHERE predictions.run_id IS DISTINCT FROM excluded.run_id
    RETURNING predictions.error
    """
)
_PG_IMAGE_META = text(
    """
    UPDATE images SET sha256 = r.b_sha, width = r.b_w, height = r.b_h
    FROM json_to_recordset(CAST(:rows AS json)) AS r(b_id bigint, b_sha varchar, b_w integer,
                                                    b_h integer)
    WHERE images.id = r.b_id AND images.id = ANY(CAST(:ids AS bigint[]))
    """
)


def _as_json(params: list[dict[str, Any]]) -> dict[str, str]:
    """Rows as the one JSON parameter of the PostgreSQL statements."""
    return {"rows": json.dumps(params, default=str)}


_IMAGE_META = (
    update(Image)
    .where(Image.id == bindparam("b_id"))
    .values(sha256=bindparam("b_sha"), width=bindparam("b_w"), height=bindparam("b_h"))
)


def save_outcomes(
    session: Session, run_id: int | None, model_version_id: int, outcomes: Iterable[Outcome]
) -> tuple[int, int]:
    """Upsert a batch of results in one statement; return (newly done, newly failed) for the run.

    Idempotent: a redelivered batch of the same run changes nothing and counts nothing, so the
    run's counters stay exact under at-least-once delivery.
    """
    rows = sorted(outcomes, key=lambda o: o.image_id)  # one lock order: no deadlocks
    if not rows:
        return 0, 0
    now = utcnow()
    params = [
        {
            "image_id": o.image_id,
            "model_version_id": model_version_id,
            "run_id": run_id,
            "label": o.label,
            "confidence": o.confidence,
            "probabilities": o.probabilities,
            "error": o.error,
            "created": now,
        }
        for o in rows
    ]
    if session.get_bind().dialect.name == "postgresql":
        errors = list(session.execute(_PG_UPSERT, _as_json(params)).scalars())
    else:
        # executemany + RETURNING: sent as multi-row VALUES ("insertmanyvalues").
        errors = list(session.execute(_upsert_statement(session), params).scalars())
    failed = sum(e is not None for e in errors)
    done = len(errors) - failed

    meta = [
        {"b_id": o.image_id, "b_sha": o.sha256, "b_w": o.width, "b_h": o.height}
        for o in rows
        if o.sha256 is not None
    ]
    if meta and session.get_bind().dialect.name == "postgresql":
        # The id list lets the planner reach the rows through the primary key: a join on the
        # JSON rows alone is planned as a sequential scan of all images, once per batch.
        session.execute(_PG_IMAGE_META, {**_as_json(meta), "ids": [m["b_id"] for m in meta]})
    elif meta:
        session.connection().execute(_IMAGE_META, meta)
    if run_id is not None and (done or failed):
        complete = and_(
            ScanRun.enqueued.is_not(None),
            ScanRun.done + ScanRun.failed + done + failed >= ScanRun.total,
        )
        session.execute(
            update(ScanRun)
            .where(ScanRun.id == run_id)
            .values(
                done=ScanRun.done + done,
                failed=ScanRun.failed + failed,
                # Counting and finishing in one statement: one round trip per batch less.
                finished=case(
                    (and_(ScanRun.finished.is_(None), complete), now), else_=ScanRun.finished
                ),
            )
        )
    return done, failed


def finish_run_if_complete(session: Session, run_id: int) -> None:
    """Stamp ``finished`` once everything is queued and every queued image has a result."""
    session.execute(
        update(ScanRun)
        .where(
            ScanRun.id == run_id,
            ScanRun.enqueued.is_not(None),
            ScanRun.finished.is_(None),
            ScanRun.done + ScanRun.failed >= ScanRun.total,
        )
        .values(finished=utcnow())
    )


def latest_predictions(session: Session) -> Select[Image, Prediction, str]:
    """Newest prediction per image, with its image and model version (the export rows)."""
    newest = (
        select(Prediction.image_id, func.max(Prediction.id).label("pid"))
        .group_by(Prediction.image_id)
        .subquery()
    )
    return (
        select(Image, Prediction, ModelVersion.version)
        .join(newest, newest.c.image_id == Image.id)
        .join(Prediction, Prediction.id == newest.c.pid)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .order_by(Image.store, Image.path)
    )
