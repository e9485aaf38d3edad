"""``retrain --from-reviews``: train on human labels, gate on a held-out part of them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from catdog.db import registry
from catdog.db.engine import engine_for, make_engine, session_factory
from catdog.db.migrate import upgrade
from catdog.db.models import Image, ModelVersion, TrainingRun
from catdog.db.reviews import Answer, HumanRow, save_answers, training_labels
from catdog.settings import Settings
from catdog.training.datasets import DatasetError, review_data
from catdog.training.tasks import HOLDOUT_KEY, VALIDATION_SLACK, review_verdict
from helpers import build_tiny_model
from training_data import make_dataset


def label_everything(session: Session, root: Path, wrong: int = 0) -> list[int]:
    """Register every image under ``root`` and give it its folder's label as a human label
    (the first ``wrong`` cats get 'dog'); return the image ids."""
    answers = []
    for i, path in enumerate(sorted(root.rglob("*.jpg"))):
        image = Image(store=str(root), path=path.relative_to(root).as_posix(), size=1, mtime=0.0)
        session.add(image)
        session.flush()
        truth = path.parent.name
        label = "dog" if truth == "cat" and i < wrong else truth
        answers.append(Answer(image.id, label, "labeled", "reviewer@example.com"))
    save_answers(session, answers, "file")
    session.commit()
    return [a.image_id for a in answers]


def test_review_data_links_trains_and_holds_out_a_stratified_part(tmp_path: Path):
    photos = make_dataset(tmp_path / "photos", per_class=10)
    rows = [
        HumanRow(i, str(photos), f"{label}/{label}.{n}.jpg", label)
        for i, (label, n) in enumerate((lbl, n) for lbl in ("cat", "dog") for n in range(10))
    ]
    rows.append(HumanRow(99, str(photos), "cat/missing.jpg", "cat"))
    rows.append(HumanRow(100, str(photos), "cat/cat.0.jpg", "fox"))  # not a class: left out
    extra = make_dataset(tmp_path / "extra", per_class=3, seed=5)
    data = review_data(rows, tmp_path / "out", ["cat", "dog"], data_dir=extra, seed=1)
    assert data.holdout is not None
    assert data.holdout.counts() == {"cat": 2, "dog": 2}  # a fifth of each class
    assert (data.trained, data.held_out, data.unreadable, data.given) == (16, 4, 1, 6)
    linked = sorted(p for p in (data.train_dir / "cat" / "reviewed").iterdir())
    assert all(p.is_symlink() and p.resolve().parent == photos / "cat" for p in linked)
    assert len(list((data.train_dir / "dog" / "data").rglob("*.jpg"))) == 3
    held = {p.name for p in (tmp_path / "out" / "holdout").rglob("*.jpg")}
    trained = {p.name for p in (data.train_dir).rglob("reviewed/*.jpg")}
    assert not held & trained
    with pytest.raises(DatasetError, match="no human labels"):
        review_data([], tmp_path / "none", ["cat", "dog"])


def test_review_data_fetches_object_store_images_through_the_store(tmp_path: Path):
    photos = make_dataset(tmp_path / "photos", per_class=3)
    fs = fsspec.filesystem("memory")
    for path in photos.rglob("*.jpg"):
        fs.pipe(f"/reviewbucket/{path.relative_to(photos).as_posix()}", path.read_bytes())
    rows = [
        HumanRow(i, "memory://reviewbucket", f"{label}/{label}.{n}.jpg", label)
        for i, (label, n) in enumerate((lbl, n) for lbl in ("cat", "dog") for n in range(3))
    ]
    data = review_data(rows, tmp_path / "out", ["cat", "dog"], holdout_fraction=0.34)
    copies = sorted((data.train_dir).rglob("*.jpg")) + sorted(
        (tmp_path / "out/holdout").rglob("*.jpg")
    )
    assert len(copies) == 6 and not any(p.is_symlink() for p in copies)
    assert copies[0].read_bytes()[:2] == b"\xff\xd8"  # the object's bytes, a JPEG


def test_the_gate_wants_better_on_held_out_humans_and_not_worse_on_validation():
    humans_new, humans_old = {"accuracy": 0.9, "log_loss": 0.3}, {"accuracy": 0.6, "log_loss": 0.9}
    val_old = {"accuracy": 0.95, "log_loss": 0.2}
    ok, why = review_verdict(humans_new, humans_old, {"accuracy": 0.95, "log_loss": 0.2}, val_old)
    assert ok and "held-out human labels: accuracy 0.900 vs 0.600" in why
    slightly = {"accuracy": 0.95 - VALIDATION_SLACK / 2, "log_loss": 0.3}
    assert review_verdict(humans_new, humans_old, slightly, val_old)[0]
    much = {"accuracy": 0.95 - 2 * VALIDATION_SLACK, "log_loss": 0.3}
    ok, why = review_verdict(humans_new, humans_old, much, val_old)
    assert not ok and "worse" in why
    assert not review_verdict(humans_old, humans_new, val_old, val_old)[0]


def test_retrain_from_reviews_beats_a_model_reviewers_corrected(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Production calls everything a dog; reviewers said which are cats. A tiny model trained
    on their labels wins on the held-out ones and is promoted; both scores are on record."""
    from catdog.training.tasks import run_training

    monkeypatch.setattr(registry, "BUNDLED_MODEL", tmp_path / "no-bundled-model.keras")
    settings = Settings(database_url=sqlite_url, models_dir=tmp_path / "models")
    engine = make_engine(sqlite_url)
    upgrade(engine)
    with session_factory(engine).begin() as s:
        dog_only = registry.register(
            s, build_tiny_model(tmp_path / "dogs/m.keras", bias=(-50.0, 50.0)), tmp_path / "models"
        )
        registry.promote(s, dog_only.version)
    photos = make_dataset(tmp_path / "photos", per_class=20)
    with session_factory(engine)() as s:
        label_everything(s, photos)
        assert len(training_labels(s)) == 40
    result = run_training(None, "tiny", epochs=3, settings=settings, from_reviews=True)
    assert result["promoted"], result["message"]
    assert result[HOLDOUT_KEY]["baseline"]["accuracy"] == 0.5  # all dogs: half right
    assert result[HOLDOUT_KEY]["new"]["accuracy"] > 0.5
    assert "held-out human labels" in result["message"]
    with session_factory(engine_for(sqlite_url))() as s:
        run = s.scalars(select(TrainingRun)).one()
        assert run.data == "human labels" and run.promoted
        assert run.metrics[HOLDOUT_KEY]["n"] == 8 and run.metrics["trained_human_labels"] == 32
        assert run.baseline_metrics[HOLDOUT_KEY]["accuracy"] == 0.5
        assert run.baseline_metrics["version"] == dog_only.version
        prod = registry.production(s)
        assert prod is not None and prod.version == result["version"]
    engine.dispose()


def test_retrain_from_reviews_without_labels_says_so(tmp_path: Path, sqlite_url: str):
    from catdog.training.tasks import run_training

    settings = Settings(database_url=sqlite_url, models_dir=tmp_path / "models")
    with pytest.raises(DatasetError, match="no human labels"):
        run_training(None, "tiny", epochs=1, settings=settings, from_reviews=True)


@pytest.mark.services
@pytest.mark.slow
def test_retrain_from_reviews_runs_on_the_training_worker(
    worker_factory, cluster_env, tmp_path, postgres_url
):
    photos = make_dataset(tmp_path / "photos", per_class=10)
    extra = make_dataset(tmp_path / "labeled", per_class=6, seed=3)
    engine = make_engine(postgres_url)
    with session_factory(engine)() as s:
        label_everything(s, photos)
    models_dir = tmp_path / "registry"
    worker_factory(queues="training", CATDOG_MODELS_DIR=str(models_dir))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "catdog",
            "retrain",
            "--from-reviews",
            "--data",
            str(extra),
            "--arch",
            "tiny",
            "--epochs",
            "1",
            "--force",
            "--wait",
        ],
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert result["promoted"] is True and result[HOLDOUT_KEY]["new"]["n"] == 4
    reader = create_engine(postgres_url)
    with reader.connect() as conn:
        run = conn.execute(select(TrainingRun)).one()
        prod = conn.execute(select(ModelVersion).where(ModelVersion.is_production)).one()
    reader.dispose()
    engine.dispose()
    assert run.data == f"human labels + {extra}" and run.model_version_id == prod.id
    assert run.metrics["data_images"] == 12 and run.metrics["trained_human_labels"] == 16
    assert run.baseline_metrics[HOLDOUT_KEY]["n"] == 4  # the current model scored there too
