"""Registration, skip logic and the idempotent bulk upsert, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from catdog.db.engine import make_engine, session_factory
from catdog.db.migrate import upgrade
from catdog.db.models import ModelVersion, Prediction, RunResult, ScanRun
from catdog.db.queries import Outcome, register_images, save_outcomes
from catdog.stores import FileEntry


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest) -> sessionmaker[Session]:
    """A migrated database of each supported kind."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


def _version(session: Session, name: str = "v1") -> int:
    row = ModelVersion(
        version=name,
        file="m.keras",
        sha256=name,
        arch="tiny",
        classes=["cat", "dog"],
        input_size=[32, 32],
        metrics={},
    )
    session.add(row)
    session.flush()
    return row.id


def _run(session: Session, total: int) -> int:
    run = ScanRun(
        root="/r", relabel=False, files_seen=total, skipped=0, total=total, done=0, failed=0
    )
    session.add(run)
    session.flush()
    return run.id


def _queued_run(sessions: sessionmaker[Session]) -> tuple[int, list[int], int]:
    """A model version, the ENTRIES registered, and a run that has queued all of them."""
    with sessions.begin() as s:
        v = _version(s)
        ids, _ = register_images(s, "/r", ENTRIES, v)
        run = _run(s, total=len(ENTRIES))
        s.execute(ScanRun.__table__.update().values(enqueued=func.now()))
    return v, ids, run


ENTRIES = [FileEntry(f"img{i}.jpg", 100 + i, 1.0) for i in range(5)]


def test_new_files_are_registered_once_and_all_need_work(sessions):
    """Registering the same files twice yields the same ids and no duplicates."""
    with sessions.begin() as s:
        v = _version(s)
        todo, skipped = register_images(s, "/r", ENTRIES, v)
    with sessions.begin() as s:
        again, skipped2 = register_images(s, "/r", ENTRIES, v)
    assert len(todo) == 5 and skipped == [] and sorted(again) == sorted(todo)
    assert skipped2 == []


def test_labeled_unchanged_files_are_skipped_and_changed_ones_are_not(sessions):
    """A result skips the image until its size or mtime changes; failures only by default."""
    with sessions.begin() as s:
        v = _version(s)
        ids, _ = register_images(s, "/r", ENTRIES, v)
        save_outcomes(
            s,
            None,
            v,
            [Outcome(i, "cat", 0.9) for i in ids[:3]] + [Outcome(ids[3], error="corrupt")],
        )
    changed = [FileEntry("img0.jpg", 999, 2.0), *ENTRIES[1:]]
    with sessions.begin() as s:
        todo, skipped = register_images(s, "/r", changed, v, retry_failed=True)
        left = s.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.image_id == ids[0])
        )
    assert sorted(skipped) == sorted(ids[1:3])
    assert sorted(todo) == sorted([ids[0], ids[3], ids[4]])  # changed, failed, never done
    assert left == 0  # the changed file's old label is gone
    with sessions.begin() as s:
        todo_default, _ = register_images(s, "/r", changed, v)
    assert sorted(todo_default) == sorted([ids[0], ids[4]])  # the failure stays recorded


def test_relabel_skips_only_images_labeled_by_the_given_version(sessions):
    """With relabel, a label from an older model no longer counts as done."""
    with sessions.begin() as s:
        old, new = _version(s, "old"), _version(s, "new")
        ids, _ = register_images(s, "/r", ENTRIES, old)
        save_outcomes(s, None, old, [Outcome(i, "cat", 0.9) for i in ids])
    with sessions.begin() as s:
        todo_plain, _ = register_images(s, "/r", ENTRIES, new)
        todo_relabel, _ = register_images(s, "/r", ENTRIES, new, relabel=True)
    assert todo_plain == [] and sorted(todo_relabel) == sorted(ids)


def test_a_redelivered_batch_changes_nothing_and_counts_nothing(sessions):
    """Saving the same outcomes twice in one run leaves one row each and exact counters."""
    v, ids, run = _queued_run(sessions)
    batch = [Outcome(i, "dog", 0.8) for i in ids[:4]] + [Outcome(ids[4], error="truncated")]
    with sessions.begin() as s:
        first = save_outcomes(s, run, v, batch)
    with sessions.begin() as s:
        second = save_outcomes(s, run, v, batch)
    with sessions() as s:
        rows = s.scalar(select(func.count()).select_from(Prediction))
        r = s.get(ScanRun, run)
        assert (r.done, r.failed) == (4, 1) and r.finished is not None
    assert first == (4, 1) and second == (0, 0) and rows == 5


def test_a_later_run_takes_over_a_failed_image_and_counts_it(sessions):
    """A retry in a new run overwrites the failure and counts for the new run."""
    with sessions.begin() as s:
        v = _version(s)
        ids, _ = register_images(s, "/r", ENTRIES[:1], v)
        run1, run2 = _run(s, 1), _run(s, 1)
        save_outcomes(s, run1, v, [Outcome(ids[0], error="file not found")])
    with sessions.begin() as s:
        assert save_outcomes(s, run2, v, [Outcome(ids[0], "cat", 0.7)]) == (1, 0)
    with sessions() as s:
        pred = s.scalars(select(Prediction)).one()
        assert (pred.label, pred.error, pred.run_id) == ("cat", None, run2)


def test_a_result_records_what_was_read_and_finishes_the_run_only_when_complete(sessions):
    """Hash, pixel size and probabilities land on the prediction; the last batch finishes."""
    v, ids, run = _queued_run(sessions)
    probs = {"cat": 0.25, "dog": 0.75}
    with sessions.begin() as s:
        first = save_outcomes(
            s, run, v, [Outcome(ids[0], "dog", 0.75, probs, None, "f" * 64, 640, 480)]
        )
    with sessions() as s:
        assert s.get(ScanRun, run).finished is None
    rest = [Outcome(i, "cat", 0.6, None, None, "a" * 64, 10, 20) for i in ids[1:4]]
    with sessions.begin() as s:
        second = save_outcomes(s, run, v, [*rest, Outcome(ids[4], error="corrupt")])
    with sessions() as s:
        r = s.get(ScanRun, run)
        assert (r.done, r.failed) == (4, 1) and r.finished is not None
        pred = s.scalars(select(Prediction).where(Prediction.image_id == ids[0])).one()
        assert (pred.sha256, pred.width, pred.height) == ("f" * 64, 640, 480)
        assert pred.probabilities == probs and pred.model_version_id == v
        broken = s.scalars(select(Prediction).where(Prediction.image_id == ids[4])).one()
        assert (broken.label, broken.error, broken.sha256) == (None, "corrupt", None)
    assert first == (1, 0) and second == (3, 1)


def _counts(sessions: sessionmaker[Session], run: int) -> tuple[int, int, int, bool]:
    with sessions() as s:
        r = s.get(ScanRun, run)
        return r.done, r.failed, r.total, r.finished is not None


def _queued_runs(sessions: sessionmaker[Session], n: int) -> tuple[int, list[int], list[int]]:
    """A model version, the ENTRIES registered, and ``n`` runs that each queued all of them."""
    with sessions.begin() as s:
        v = _version(s)
        ids, _ = register_images(s, "/r", ENTRIES, v)
        runs = [_run(s, total=len(ENTRIES)) for _ in range(n)]
        s.execute(ScanRun.__table__.update().values(enqueued=func.now()))
    return v, ids, runs


def test_overlapping_runs_and_a_redelivery_never_count_a_batch_twice(sessions):
    """B's first batch, then A's, then B's again: B has counted 3 of 5 and is not finished."""
    v, ids, (a, b) = _queued_runs(sessions, 2)
    first, second = ids[:3], ids[3:]
    for run, batch in ((b, first), (a, first), (b, first)):
        with sessions.begin() as s:
            save_outcomes(s, run, v, [Outcome(i, "cat", 0.9) for i in batch])
    assert _counts(sessions, b) == (3, 0, 5, False)  # scan --wait must not return yet
    assert _counts(sessions, a) == (3, 0, 5, False)
    with sessions.begin() as s:
        assert save_outcomes(s, b, v, [Outcome(i, "cat", 0.9) for i in second]) == (2, 0)
    assert _counts(sessions, b) == (5, 0, 5, True)


def test_a_batch_redelivered_after_a_relabel_run_counts_nothing_and_keeps_the_new_label(
    sessions,
):
    """A's batch comes back after relabel run R wrote the new model's label: no count, no
    overwrite."""
    with sessions.begin() as s:
        old, new = _version(s, "old"), _version(s, "new")
        ids, _ = register_images(s, "/r", ENTRIES, old)
        a, r = _run(s, len(ids)), _run(s, len(ids))
        s.execute(ScanRun.__table__.update().values(enqueued=func.now()))
    with sessions.begin() as s:
        save_outcomes(s, a, new, [Outcome(i, "cat", 0.9) for i in ids])
    with sessions.begin() as s:
        assert save_outcomes(s, r, new, [Outcome(i, "dog", 0.7) for i in ids]) == (5, 0)
    with sessions.begin() as s:  # the worker labels A's redelivered batch with today's model
        assert save_outcomes(s, a, new, [Outcome(i, "cat", 0.9) for i in ids]) == (0, 0)
    assert _counts(sessions, a) == (5, 0, 5, True) and _counts(sessions, r) == (5, 0, 5, True)
    with sessions() as s:
        labels = set(s.scalars(select(Prediction.label).where(Prediction.model_version_id == new)))
        assert labels == {"dog"}


def test_any_interleaving_of_runs_and_redeliveries_counts_each_image_once_per_run(sessions):
    """Three overlapping runs, each batch delivered one to three times in a random order: every
    run ends with done + failed == total, finished only after its last batch first arrived."""
    import random

    v, ids, runs = _queued_runs(sessions, 3)
    batches = [ids[:2], ids[2:4], ids[4:]]
    rng = random.Random(11)
    for _ in range(8):
        with sessions.begin() as s:
            s.execute(ScanRun.__table__.update().values(done=0, failed=0, finished=None))
            s.execute(RunResult.__table__.delete())
            s.execute(Prediction.__table__.delete())
        deliveries = [(run, k) for run in runs for k in range(3) for _ in range(rng.randint(1, 3))]
        rng.shuffle(deliveries)
        arrived: dict[int, set[int]] = {run: set() for run in runs}
        for run, k in deliveries:
            outcomes = [
                Outcome(i, error="bad") if i == ids[0] else Outcome(i, "dog", 0.6)
                for i in batches[k]
            ]
            with sessions.begin() as s:
                save_outcomes(s, run, v, outcomes)
            arrived[run].add(k)
            done, failed, total, finished = _counts(sessions, run)
            assert done + failed == sum(len(batches[j]) for j in arrived[run])
            assert finished == (len(arrived[run]) == 3)
        for run in runs:
            assert _counts(sessions, run) == (4, 1, 5, True)
