"""The HTML results report, on a SQLite database filled through the table models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from catdog.db.migrate import upgrade
from catdog.db.models import Image, ModelVersion, Prediction


@pytest.fixture
def results_db(
    sqlite_url: str, tmp_path: Path, image_factory: Callable[..., Path]
) -> tuple[str, Path]:
    """Five images under one store: three cats, one dog, one broken file; and its URL."""
    store = tmp_path
    for i in range(3):
        image_factory(f"cats/c{i}.jpg", "cat", seed=i)
    image_factory("dogs/d0.png", "dog", seed=7)
    (store / "broken.jpg").write_bytes(b"not a jpeg")
    engine = create_engine(sqlite_url)
    upgrade(engine)  # migrated, as `catdog db upgrade` leaves it
    with Session(engine) as session:
        v1 = ModelVersion(version="v1", file="v1.keras", sha256="0" * 64, classes=["cat", "dog"])
        session.add(v1)
        session.flush()
        rows = [
            ("cats/c0.jpg", "cat", 0.99, None),
            ("cats/c1.jpg", "cat", 0.51, None),
            ("cats/c2.jpg", "cat", 0.93, None),
            ("dogs/d0.png", "dog", 0.62, None),
            ("broken.jpg", None, None, "corrupt or truncated image: cannot identify image file"),
        ]
        for path, label, confidence, error in rows:
            image = Image(store=str(store), path=path, size=1, mtime=0.0)
            session.add(image)
            session.flush()
            session.add(
                Prediction(
                    image_id=image.id,
                    model_version_id=v1.id,
                    label=label,
                    confidence=confidence,
                    error=error,
                )
            )
        session.commit()
    engine.dispose()
    return sqlite_url, store


def test_summary_counts_labels_failures_and_orders_doubtful_images_first(
    results_db: tuple[str, Path],
) -> None:
    """The summary counts each label and failure kind and lists the least confident first."""
    from catdog.ops.report import summarize

    url, store = results_db
    engine = create_engine(url)
    with Session(engine) as session:
        summary = summarize(session, gallery_size=2)
    engine.dispose()
    assert (summary.labeled, summary.failed) == (4, 1)
    assert summary.per_label == {"cat": 3, "dog": 1}
    assert summary.failure_kinds == {"corrupt or truncated image": 1}
    assert [d.location for d in summary.doubtful] == [
        f"{store}/cats/c1.jpg",
        f"{store}/dogs/d0.png",
    ]
    assert sum(map(sum, summary.histogram.values())) == 4


def test_report_command_writes_a_page_with_counts_gallery_and_failures(
    results_db: tuple[str, Path], tmp_path: Path, env: Callable[..., None]
) -> None:
    """``catdog report`` writes index.html and the histogram PNG from the configured database."""
    from catdog.cli import main

    url, store = results_db
    env(database_url=url, store_roots=str(store))
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert '<b id="labeled">4</b>' in page
    assert '<b id="failed">1</b>' in page
    assert "<td>cat</td><td>3</td>" in page
    assert "cannot identify image file" in page
    assert str(store / "broken.jpg") in page
    # All four labeled images fit the gallery, each with an embedded thumbnail.
    assert page.count("data:image/jpeg;base64,") == 4
    assert (out / "confidence.png").read_bytes().startswith(b"\x89PNG")


def test_thumbnails_outside_the_store_roots_are_not_opened(
    image_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """A database row pointing outside the store roots gets no thumbnail."""
    from catdog.ops.report import thumbnail

    photo = image_factory("elsewhere/x.jpg")
    assert thumbnail(str(photo.parent), photo.name) is not None
    assert thumbnail(str(photo.parent), photo.name, [tmp_path / "store"]) is None


def test_a_labeled_file_swapped_for_a_pipe_gets_no_thumbnail_instead_of_a_hang(
    image_factory: Callable[..., Path],
) -> None:
    """The report reads through the workers' guarded reader: a FIFO is refused at once."""
    import os

    from catdog.ops.report import thumbnail

    photo = image_factory("store/x.jpg")
    photo.unlink()
    os.mkfifo(photo)
    assert thumbnail(str(photo.parent), photo.name) is None
