"""Migrations carry existing data forward and back, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, inspect, text

from catdog.db.engine import make_engine
from catdog.db.migrate import downgrade, upgrade


def _model_version(c: Connection) -> None:
    """Model version 1, which the rows of these tests point at."""
    c.execute(
        text(
            "INSERT INTO model_versions (id, version, file, sha256, arch, classes, input_size,"
            " metrics, created, is_production) VALUES (1, 'v1', 'm', 'x', 'tiny', '[]', '[]',"
            " '{}', CURRENT_TIMESTAMP, false)"
        )
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_0003_moves_what_was_read_from_images_to_predictions_and_back(
    request: pytest.FixtureRequest, kind: str
):
    """Hash and size recorded on images before 0003 are on their predictions after it."""
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine, "0002")
    with engine.begin() as c:
        _model_version(c)
        c.execute(
            text(
                "INSERT INTO images (id, store, path, size, mtime, sha256, width, height,"
                " registered) VALUES (1, '/r', 'a.jpg', 1, 0, :sha, 640, 480, CURRENT_TIMESTAMP),"
                " (2, '/r', 'b.jpg', 1, 0, NULL, NULL, NULL, CURRENT_TIMESTAMP)"
            ),
            {"sha": "e" * 64},
        )
        c.execute(
            text(
                "INSERT INTO predictions (image_id, model_version_id, label, confidence, created)"
                " VALUES (1, 1, 'cat', 0.9, CURRENT_TIMESTAMP),"
                " (2, 1, 'dog', 0.8, CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    with engine.connect() as c:
        moved = c.execute(
            text("SELECT image_id, sha256, width, height FROM predictions ORDER BY image_id")
        ).all()
        image_columns = c.execute(text("SELECT * FROM images")).keys()
    assert [tuple(r) for r in moved] == [(1, "e" * 64, 640, 480), (2, None, None, None)]
    assert "sha256" not in image_columns
    downgrade(engine, "0002")
    with engine.connect() as c:
        back = c.execute(text("SELECT id, sha256, width, height FROM images ORDER BY id")).all()
        pred_columns = c.execute(text("SELECT * FROM predictions")).keys()
    assert [tuple(r) for r in back] == [(1, "e" * 64, 640, 480), (2, None, None, None)]
    assert "sha256" not in pred_columns
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_0004_counts_results_of_runs_in_flight_once_and_goes_back(
    request: pytest.FixtureRequest, kind: str
):
    """Predictions saved before 0004 are on record for their run, so a redelivery after the
    upgrade counts nothing; downgrade removes the new table and columns."""
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine, "0003")
    with engine.begin() as c:
        _model_version(c)
        c.execute(
            text(
                "INSERT INTO images (id, store, path, size, mtime, registered) VALUES"
                " (1, '/r', 'a.jpg', 1, 0, CURRENT_TIMESTAMP),"
                " (2, '/r', 'b.jpg', 1, 0, CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO scan_runs (id, root, relabel, started, files_seen, skipped, total,"
                " done, failed) VALUES (7, '/r', false, CURRENT_TIMESTAMP, 2, 0, 2, 1, 0)"
            )
        )
        c.execute(
            text(
                "INSERT INTO predictions (image_id, model_version_id, run_id, label, created)"
                " VALUES (1, 1, 7, 'cat', CURRENT_TIMESTAMP),"
                " (2, 1, NULL, 'dog', CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    with engine.connect() as c:
        counted = c.execute(text("SELECT run_id, image_id FROM run_results")).all()
        run_columns = set(c.execute(text("SELECT * FROM scan_runs")).keys())
    assert [tuple(r) for r in counted] == [(7, 1)]
    assert {"producer", "heartbeat", "ended", "end_reason"} <= run_columns
    downgrade(engine, "0003")
    with engine.connect() as c:
        columns = set(c.execute(text("SELECT * FROM scan_runs")).keys())
        assert "producer" not in columns
        tables = inspect(c).get_table_names()
    assert "run_results" not in tables
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_0006_gives_images_a_version_tag_and_goes_back(request: pytest.FixtureRequest, kind: str):
    """Images registered before 0006 keep their rows with no tag; downgrade drops the column
    and keeps the rows and their predictions."""
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "postgres_url")
    engine = make_engine(url)
    upgrade(engine, "0005")
    with engine.begin() as c:
        _model_version(c)
        c.execute(
            text(
                "INSERT INTO images (id, store, path, size, mtime, registered)"
                " VALUES (1, 's3://b/p', 'a.jpg', 1, 0, CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO predictions (image_id, model_version_id, label, created)"
                " VALUES (1, 1, 'cat', CURRENT_TIMESTAMP)"
            )
        )
    upgrade(engine)
    with engine.begin() as c:
        assert c.execute(text("SELECT path, version FROM images")).all() == [("a.jpg", None)]
        c.execute(text("UPDATE images SET version = 'abc' WHERE id = 1"))
    downgrade(engine, "0005")
    with engine.connect() as c:
        columns = set(c.execute(text("SELECT * FROM images")).keys())
        labels = c.execute(text("SELECT label FROM predictions")).scalars().all()
    assert "version" not in columns and labels == ["cat"]
    engine.dispose()
