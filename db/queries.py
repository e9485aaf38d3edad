"""The few queries that matter: registration, bulk upsert, progress counters, export."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, any_, bindparam, case, delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from catdog.db.models import Image, ModelVersion, Prediction, RunResult, ScanRun, utcnow
from catdog.stores import FileEntry

#: Parameters per IN (...) list; well under SQLite's 32,766 variable limit.
IN_CHUNK = 5000


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


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _insert(name: str) -> Any:
    """The dialect's INSERT construct, which knows ON CONFLICT."""
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"catdog supports PostgreSQL and SQLite, not {name}")


def _one_of(session: Session, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL as ``= ANY(array)``: one parameter, not thousands.

    A 5,000-value IN list costs more to render and bind than the query costs to run (second
    scans went from 20,000 to 45,000 files/s on PostgreSQL with the array).
    """
    if _dialect(session) == "postgresql":
        array = postgresql.ARRAY(column.type)
        return column == any_(bindparam(None, list(values), type_=array))  # type: ignore[no-any-return]
    return column.in_(values)  # type: ignore[no-any-return]


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
    a result (a broken file stays broken) unless ``retry_failed``. A changed file (see
    :func:`_changed`) loses its old predictions, which described other pixels.
    """
    by_path = {e.path: e for e in entries}
    known: dict[str, tuple[int, int, float, str | None]] = {}
    for chunk in _chunks(list(by_path)):
        rows = session.execute(
            select(Image.path, Image.id, Image.size, Image.mtime, Image.version).where(
                Image.store == store, _one_of(session, Image.path, chunk)
            )
        )
        known.update({path: (id_, size, mtime, tag) for path, id_, size, mtime, tag in rows})

    new = [e for p, e in by_path.items() if p not in known]
    changed: list[tuple[int, FileEntry]] = []
    tagged: list[tuple[int, FileEntry]] = []  # unchanged, registered before it had a tag
    for path, (id_, size, mtime, tag) in known.items():
        e = by_path[path]
        if _changed(size, mtime, tag, e):
            changed.append((id_, e))
        elif tag is None and e.version is not None:
            tagged.append((id_, e))
    ids: list[int] = []
    if new:
        ids.extend(_insert_images(session, store, new))
    if changed:
        changed_ids = [id_ for id_, _ in changed]
        session.execute(
            update(Image),
            [
                {"id": id_, "size": e.size, "mtime": e.mtime, "version": e.version}
                for id_, e in changed
            ],
        )
        for chunk in _chunks(changed_ids):
            session.execute(delete(Prediction).where(_one_of(session, Prediction.image_id, chunk)))
        ids.extend(changed_ids)
    if tagged:
        session.execute(update(Image), [{"id": id_, "version": e.version} for id_, e in tagged])

    changed_paths = {e.path for _, e in changed}
    unchanged = [known[p][0] for p in known if p not in changed_paths]
    labeled: set[int] = set()
    for chunk in _chunks(unchanged):
        cond: list[ColumnElement[bool]] = [_one_of(session, Prediction.image_id, chunk)]
        if retry_failed:
            cond.append(Prediction.error.is_(None))
        if relabel:
            cond.append(Prediction.model_version_id == model_version_id)
        labeled.update(session.scalars(select(Prediction.image_id).where(and_(*cond))))
    ids.extend(i for i in unchanged if i not in labeled)
    return ids, [i for i in unchanged if i in labeled]


def _changed(size: int, mtime: float, version: str | None, entry: FileEntry) -> bool:
    """Whether a registered file's content changed, going by what the listing gives.

    A store's version tag (S3 ETag, GCS generation) decides where both sides have one: a
    rewritten object is changed even with the same size and time, one copied unchanged is not.
    Otherwise (local files, rows registered before tags were kept) size and mtime decide.
    """
    if size != entry.size:
        return True
    if version is not None and entry.version is not None:
        return version != entry.version
    return mtime != entry.mtime


# PostgreSQL: new files as four arrays, one parameter each. A multi-row VALUES list of 5,000
# files (20,000 parameters) took longer for SQLAlchemy to compile than for the server to run.
_PG_REGISTER = text(
    """
    INSERT INTO images (store, path, size, mtime, version, registered)
    SELECT CAST(:store AS varchar), r.path, r.size, r.mtime, r.version,
           CAST(:now AS timestamptz)
    FROM unnest(CAST(:paths AS varchar[]), CAST(:sizes AS bigint[]),
                CAST(:mtimes AS double precision[]), CAST(:versions AS varchar[]))
         AS r(path, size, mtime, version)
    ON CONFLICT (store, path) DO NOTHING
    RETURNING id
    """
)


@functools.cache
def _register_statement(dialect: str) -> Any:
    """INSERT of new images, skipping paths a concurrent scan inserted; returns their ids."""
    return (
        _insert(dialect)(Image)
        .on_conflict_do_nothing(index_elements=["store", "path"])
        .returning(Image.id)
    )


def _insert_images(session: Session, store: str, new: Sequence[FileEntry]) -> list[int]:
    """Insert new files (a concurrent scan may have inserted some: skipped); return new ids."""
    name = _dialect(session)
    if name == "postgresql":
        params = {
            "store": store,
            "now": utcnow(),
            "paths": [e.path for e in new],
            "sizes": [e.size for e in new],
            "mtimes": [e.mtime for e in new],
            "versions": [e.version for e in new],
        }
        return list(session.scalars(_PG_REGISTER, params))
    # One statement, built and compiled once, sent as executemany.
    now = utcnow()
    rows = [
        {
            "store": store,
            "path": e.path,
            "size": e.size,
            "mtime": e.mtime,
            "version": e.version,
            "registered": now,
        }
        for e in new
    ]
    return list(session.scalars(_register_statement(name), rows))


def image_locations(session: Session, image_ids: Sequence[int]) -> dict[int, tuple[str, str]]:
    """Map image id to (store, relative path)."""
    out: dict[int, tuple[str, str]] = {}
    for chunk in _chunks(list(image_ids)):
        rows = session.execute(
            select(Image.id, Image.store, Image.path).where(_one_of(session, Image.id, chunk))
        )
        out.update({id_: (store, path) for id_, store, path in rows})
    return out


@functools.cache
def _upsert_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT for predictions, built once per dialect (compiled once, cached)."""
    table = Prediction.__table__
    stmt = _insert(dialect)(table)
    ex = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=["image_id", "model_version_id"],
        set_={c: ex[c] for c in _WRITTEN if c not in ("image_id", "model_version_id")},
        # Only a different run may overwrite: a redelivery within the same run is a no-op.
        where=table.c.run_id.is_distinct_from(ex.run_id),
    ).returning(table.c.error)


#: The prediction columns a result writes.
_WRITTEN = (
    "image_id",
    "model_version_id",
    "run_id",
    "label",
    "confidence",
    "probabilities",
    "error",
    "sha256",
    "width",
    "height",
    "created",
)

# PostgreSQL: the whole batch write in one statement and one round trip. The rows travel as
# one JSON document (one C-speed json.dumps; psycopg's array adaptation quotes every element
# in Python and cost a quarter of the time), unpacked by json_to_recordset. ``fresh`` records
# which images are new to the run (one run_results row per run and image); only those are
# written and counted, so a redelivery after another run took the prediction over counts
# nothing. The run's counters and finish time are updated in the same statement. The text
# never changes, so it is planned once per connection.
# bench/producer_db.py, 256-row batches: 12,400 rows/s as three statements with an images
# update; 23,000 as this statement over arrays; 28,000-31,000 over JSON (before run_results).
_PG_SAVE = text(
    """
    WITH r AS (
        SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS r(
            image_id bigint, label varchar, confidence double precision, probabilities json,
            error text, sha256 varchar, width integer, height integer)
    ), fresh AS (
        INSERT INTO run_results (run_id, image_id)
        SELECT CAST(:run_id AS integer), r.image_id FROM r
        WHERE CAST(:run_id AS integer) IS NOT NULL
        ORDER BY r.image_id
        ON CONFLICT DO NOTHING
        RETURNING image_id
    ), todo AS (
        SELECT r.* FROM r
        WHERE CAST(:run_id AS integer) IS NULL OR r.image_id IN (SELECT image_id FROM fresh)
    ), saved AS (
        INSERT INTO predictions (image_id, model_version_id, run_id, label, confidence,
                                 probabilities, error, sha256, width, height, created)
        SELECT t.image_id, CAST(:model_version_id AS integer), CAST(:run_id AS integer),
               t.label, t.confidence, t.probabilities, t.error, t.sha256, t.width, t.height,
               CAST(:created AS timestamptz)
        FROM todo t ORDER BY t.image_id
        ON CONFLICT (image_id, model_version_id) DO UPDATE SET
            run_id = excluded.run_id, label = excluded.label, confidence = excluded.confidence,
            probabilities = excluded.probabilities, error = excluded.error,
            sha256 = excluded.sha256, width = excluded.width, height = excluded.height,
            created = excluded.created
        WHERE predictions.run_id IS DISTINCT FROM excluded.run_id
        RETURNING predictions.error
    ), n AS (
        SELECT count(*) FILTER (WHERE error IS NULL) AS done, count(error) AS failed FROM saved
    ), counted AS (
        UPDATE scan_runs SET
            done = scan_runs.done + n.done,
            failed = scan_runs.failed + n.failed,
            finished = CASE
                WHEN scan_runs.finished IS NULL AND scan_runs.enqueued IS NOT NULL
                     AND scan_runs.done + scan_runs.failed + n.done + n.failed >= scan_runs.total
                THEN CAST(:created AS timestamptz) ELSE scan_runs.finished END
        FROM n
        WHERE scan_runs.id = CAST(:run_id AS integer) AND n.done + n.failed > 0
    )
    SELECT done, failed FROM n
    """
)


@functools.cache
def _count_once_statement(dialect: str) -> Any:
    """INSERT of (run, image) pairs that skips pairs already counted; returns the new images."""
    return (
        _insert(dialect)(RunResult)
        .on_conflict_do_nothing(index_elements=["run_id", "image_id"])
        .returning(RunResult.image_id)
    )


def _row(o: Outcome) -> dict[str, Any]:
    """The per-image columns of a result (the rest are the same for the whole batch)."""
    return {
        "image_id": o.image_id,
        "label": o.label,
        "confidence": o.confidence,
        "probabilities": o.probabilities,
        "error": o.error,
        "sha256": o.sha256,
        "width": o.width,
        "height": o.height,
    }


def _save_postgresql(
    session: Session, run_id: int | None, model_version_id: int, rows: Sequence[Outcome]
) -> tuple[int, int]:
    done, failed = session.execute(
        _PG_SAVE,
        {
            "rows": json.dumps([_row(o) for o in rows]),
            "model_version_id": model_version_id,
            "run_id": run_id,
            "created": utcnow(),
        },
    ).one()
    return int(done), int(failed)


def _save_generic(
    session: Session, run_id: int | None, model_version_id: int, rows: Sequence[Outcome]
) -> tuple[int, int]:
    now = utcnow()
    if run_id is not None:
        pairs = [{"run_id": run_id, "image_id": o.image_id} for o in rows]
        fresh = set(session.scalars(_count_once_statement(_dialect(session)), pairs))
        rows = [o for o in rows if o.image_id in fresh]
        if not rows:
            return 0, 0
    batch = {"model_version_id": model_version_id, "run_id": run_id, "created": now}
    params = [{**_row(o), **batch} for o in rows]
    # executemany + RETURNING: sent as multi-row VALUES ("insertmanyvalues").
    errors = list(session.execute(_upsert_statement(_dialect(session)), params).scalars())
    failed = sum(e is not None for e in errors)
    done = len(errors) - failed
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


def save_outcomes(
    session: Session, run_id: int | None, model_version_id: int, outcomes: Iterable[Outcome]
) -> tuple[int, int]:
    """Upsert a batch of results, count them for the run; return (newly done, newly failed).

    A run counts each image once (a ``run_results`` row per run and image): a redelivered
    batch changes nothing and counts nothing, also after an overlapping run or a relabel
    wrote the same image in between, so the run's counters stay exact under at-least-once
    delivery. The run is stamped finished by the batch that completes it.
    """
    rows = sorted(outcomes, key=lambda o: o.image_id)  # one lock order: no deadlocks
    if not rows:
        return 0, 0
    if _dialect(session) == "postgresql":
        return _save_postgresql(session, run_id, model_version_id, rows)
    return _save_generic(session, run_id, model_version_id, rows)


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
