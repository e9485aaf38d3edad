"""``train(...)`` and the training task's plain function ``run_training`` (on SQLite)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from catdog.db import registry
from catdog.db.engine import engine_for, session_factory
from catdog.db.models import ModelVersion, TrainingRun
from catdog.settings import Settings
from catdog.training.datasets import DatasetError
from catdog.training.train import train
from training_data import make_dataset

#: Shared fixtures: blob_data (generated images) and tiny_run (a model trained on them).
pytest_plugins = ["training_fixtures"]


def test_training_writes_the_model_its_metadata_history_and_report(tiny_run: Any) -> None:
    """The run folder holds model.keras, model.json, history.json, report.html and plots."""
    out = tiny_run.out_dir
    for name in (
        "model.keras",
        "model.json",
        "history.json",
        "report.html",
        "learning_curves.png",
        "confusion_matrix.png",
        "roc_curve.png",
    ):
        assert (out / name).is_file(), name
    meta = json.loads((out / "model.json").read_text())
    assert meta["arch"] == "tiny" and meta["classes"] == ["cat", "dog"]
    assert meta["input_size"] == [32, 32] and meta["seed"] == 0
    assert len(meta["data_fingerprint"]) == 16 and meta["training_seconds"] > 0
    assert meta["n_train"] + meta["n_validation"] == 48
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2 and len(history["val_accuracy"]) == 2
    html = (out / "report.html").read_text()
    assert "learning_curves.png" in html and "Validation metrics" in html


def test_a_tiny_model_learns_red_versus_blue_blobs(tiny_run: Any) -> None:
    """Two epochs on the generated blobs separate the classes on validation."""
    assert tiny_run.metrics["roc_auc"] >= 0.95
    assert tiny_run.metrics["accuracy"] >= 0.8
    assert tiny_run.metadata["metrics"]["accuracy"] == tiny_run.metrics["accuracy"]


def test_progress_is_reported_after_every_epoch(tiny_run: Any) -> None:
    """The progress hook gets (epoch, epochs, metrics) once per epoch."""
    calls = tiny_run.progress_calls
    assert [(epoch, total) for epoch, total, _ in calls] == [(1, 2), (2, 2)]
    assert {"loss", "val_loss", "accuracy"} <= calls[-1][2].keys()


def test_training_is_reproducible_with_a_seed(
    blob_data: Path, tiny_run: Any, tmp_path: Path
) -> None:
    """The same seed and data give the same learning curve."""
    again = train(blob_data, tmp_path, arch="tiny", epochs=2, seed=0, report=False)
    np.testing.assert_allclose(again.history["loss"], tiny_run.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(again.history["val_loss"], tiny_run.history["val_loss"], rtol=1e-4)


def test_training_on_a_single_class_is_refused(tmp_path: Path) -> None:
    """One class cannot train a classifier: the error says so before any training."""
    root = make_dataset(tmp_path / "d", per_class=4, classes=("cat",))
    with pytest.raises(DatasetError, match="one class"):
        train(root, tmp_path / "out", arch="tiny")


def test_run_training_promotes_a_first_model_and_keeps_production_when_not_better(
    blob_data: Path, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first model is promoted; an equally good retrain is registered but not promoted."""
    from catdog.training.tasks import run_training

    monkeypatch.setattr(registry, "BUNDLED_MODEL", tmp_path / "no-bundled-model.keras")
    settings = Settings(database_url=sqlite_url, models_dir=tmp_path / "models")
    epochs: list[int] = []
    first = run_training(
        blob_data,
        "tiny",
        epochs=1,
        settings=settings,
        task_id="t-1",
        progress=lambda epoch, total, metrics: epochs.append(epoch),
    )
    assert first["promoted"] and first["baseline_version"] is None and epochs == [1]
    second = run_training(blob_data, "tiny", epochs=1, settings=settings)
    assert not second["promoted"] and second["baseline_version"] == first["version"]
    # The same data and seed train the same model: neither beats the other.
    assert second["metrics"]["accuracy"] == second["baseline_metrics"]["accuracy"]
    with session_factory(engine_for(sqlite_url))() as session:
        runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
        assert [r.status for r in runs] == ["succeeded"] * 2
        assert [r.promoted for r in runs] == [True, False]
        assert runs[0].task_id == "t-1" and runs[1].baseline_metrics["version"] == first["version"]
        assert runs[0].metrics["accuracy"] == first["metrics"]["accuracy"]
        production = registry.production(session)
        assert production is not None and production.version == first["version"]
        assert Path(production.file).parent == tmp_path / "models"
        assert len(session.scalars(select(ModelVersion)).all()) == 2


def test_a_retrain_without_arch_continues_from_the_production_model(
    blob_data: Path, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No arch: the new model starts from production's weights, in its architecture."""
    from catdog.training.tasks import run_training

    monkeypatch.setattr(registry, "BUNDLED_MODEL", tmp_path / "no-bundled-model.keras")
    settings = Settings(database_url=sqlite_url, models_dir=tmp_path / "models")
    with pytest.raises(ValueError, match="no current model to continue from"):
        run_training(blob_data, None, epochs=1, settings=settings)
    first = run_training(blob_data, "tiny", epochs=2, settings=settings)
    again = run_training(blob_data, None, epochs=1, seed=1, settings=settings)
    with session_factory(engine_for(sqlite_url))() as session:
        versions = {v.version: v for v in session.scalars(select(ModelVersion))}
        runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id)).all()
    meta = registry.read_metadata(Path(versions[again["version"]].file))
    assert meta["arch"] == "tiny" and runs[-1].arch == "tiny"
    assert meta["initial_model"] == versions[first["version"]].file
    # Trained weights, small steps: one more epoch keeps what two epochs learned.
    assert again["metrics"]["accuracy"] >= 0.8


def test_a_model_does_not_continue_on_data_with_other_classes(
    tiny_run: Any, tmp_path: Path
) -> None:
    """Continuing needs the model's own classes; the error points to training a new one."""
    other = make_dataset(tmp_path / "three", per_class=4, classes=("cat", "dog", "fox"))
    with pytest.raises(ValueError, match="--arch"):
        train(other, tmp_path / "out", arch="tiny", initial_model=tiny_run.model_file)


def test_promotion_needs_higher_accuracy_or_equal_accuracy_and_lower_log_loss() -> None:
    """Accuracy decides first, log loss breaks ties, and anything beats no model."""
    from catdog.training.tasks import is_better

    old = {"accuracy": 0.9, "log_loss": 0.3}
    assert is_better({"accuracy": 0.91, "log_loss": 0.9}, old)
    assert is_better({"accuracy": 0.9, "log_loss": 0.2}, old)
    assert not is_better({"accuracy": 0.9, "log_loss": 0.3}, old)
    assert not is_better({"accuracy": 0.89, "log_loss": 0.1}, old)
    assert is_better({"accuracy": 0.5, "log_loss": 1.0}, None)


def test_a_failed_training_run_is_recorded(tmp_path: Path, sqlite_url: str) -> None:
    """A job whose data is unusable leaves a failed training_runs row with the reason."""
    from catdog.training.tasks import run_training

    settings = Settings(database_url=sqlite_url, models_dir=tmp_path / "models")
    with pytest.raises(DatasetError):
        run_training(tmp_path / "missing", "tiny", settings=settings)
    with session_factory(engine_for(sqlite_url))() as session:
        run = session.scalars(select(TrainingRun)).one()
        assert run.status == "failed" and "not found" in (run.message or "")


def test_the_training_task_is_registered_under_its_stable_name() -> None:
    """Importing training.tasks registers ``catdog.train`` on the workers' Celery app."""
    import catdog.training.tasks  # noqa: F401
    from catdog.workers.app import app

    assert "catdog.train" in app.tasks
    assert app.conf.task_routes["catdog.train"] == {"queue": "training"}


def test_feature_extraction_shows_its_progress_as_lines_in_a_log_file() -> None:
    """Redirected to a file, rich's bar prints nothing until it ends (25 minutes of feature
    extraction on the full photo set): a line at every tenth of the batches instead."""
    import io

    from rich.console import Console

    from catdog.training import transfer

    log = io.StringIO()
    seen = list(transfer.steps_shown(iter(range(25)), 25, "  crop 224px", Console(file=log)))
    assert seen == list(range(25))
    lines = log.getvalue().splitlines()
    assert [line.split(" batches")[0] for line in lines] == [
        f"crop 224px: {n}/25" for n in [*range(2, 25, 2), 25]
    ]
    assert lines[-1].endswith("about 0 s left")


@pytest.fixture(scope="module")
def transfer_run(blob_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The real ``training.transfer.train`` on the blobs: ImageNet Lite0, 64 px, one tuning epoch.

    Weights are converted from the installed checkpoint package into a cache of the test's own.
    """
    from catdog.training import transfer
    from catdog.training.convert import WeightsUnavailable

    out = tmp_path_factory.mktemp("transfer") / "model.keras"
    cache = tmp_path_factory.mktemp("transfer_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATDOG_CACHE_DIR", str(cache))
        try:
            # Photo and mirror views: the blobs' class is their colour, which the crop view's
            # colour changes blur on 40 training images (tests/test_views.py covers it).
            meta = transfer.train(
                blob_data,
                out,
                size=64,
                seed=0,
                cache_root=cache,
                tune_epochs=1,
                views=("photo", "mirror"),
            )
        except WeightsUnavailable as exc:
            # Like a missing server: a skip on a laptop, a failure in CI.
            if os.environ.get("CI"):
                pytest.fail(f"the Lite0 ImageNet weights are required in CI: {exc}")
            pytest.skip(f"the Lite0 ImageNet weights cannot be read here: {exc}")
    return {"out": out, "meta": meta}


@pytest.mark.slow
def test_the_transfer_trainer_writes_a_lite0_model_that_labels_new_images(
    transfer_run: dict[str, Any], tmp_path: Path
) -> None:
    """transfer.train saves a model and a sidecar the registry accepts; it labels new blobs."""
    import keras

    from catdog.images import decode
    from catdog.training import transfer
    from training_data import blob_image

    out, meta = transfer_run["out"], transfer_run["meta"]
    side = registry.read_metadata(out)
    # The sidecar holds what it returned (save_model adds the creation time).
    assert {k: side[k] for k in meta} == json.loads(json.dumps(meta))
    assert side["arch"] == "lite0" and side["classes"] == ["cat", "dog"]
    assert side["input_size"] == [64, 64]
    training = side["training"]
    assert training["cut_layer"] == "block6d_add" and training["views"] == ["photo", "mirror"]
    assert len(training["history"]) == transfer.HEAD_EPOCHS + 1
    # Calibrated: the temperature fitted on the validation photos is in the last layer, and
    # the recorded uncalibrated error is what the saved model had before it.
    assert training["temperature"] > 0 and training["label_smoothing"] == transfer.LABEL_SMOOTHING
    assert training["averaged_epochs"] == 1
    assert training["split"]["train"] + training["split"]["validation"] == 48
    metrics = side["metrics"]
    assert {"accuracy", "roc_auc", "log_loss", "ece", "confusion", "from_cache"} <= metrics.keys()
    assert metrics["n"] == training["split"]["validation"] and metrics["unreadable"] == 0
    assert metrics["accuracy"] >= 0.8

    model = keras.saving.load_model(out, safe_mode=True, compile=False)
    rng = np.random.default_rng(1234)  # not the training images' seed
    truth = ["cat", "dog"] * 10
    pixels = []
    for i, label in enumerate(truth):
        blob_image(rng, label).save(tmp_path / f"{i}.jpg", quality=90)
        pixels.append(decode((tmp_path / f"{i}.jpg").read_bytes(), (64, 64), 10**8)[0])
    probs = np.asarray(model.predict(np.stack(pixels).astype(np.float32), verbose=0))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    predicted = [side["classes"][k] for k in probs.argmax(axis=1)]
    assert sum(p == t for p, t in zip(predicted, truth, strict=True)) >= 18


@pytest.mark.slow
def test_lite0_training_turns_the_transfer_trainers_run_into_history_metrics_and_a_report(
    blob_data: Path,
    transfer_run: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """arch lite0 passes size and epochs to transfer.train and reports on the model it wrote."""
    from catdog.training import transfer

    asked: list[tuple[Path, Path, dict[str, Any]]] = []

    def replay(data_dir: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
        # The real run above, replayed into this output folder: no second training.
        asked.append((Path(data_dir), Path(out), kwargs))
        shutil.copyfile(transfer_run["out"], out)
        shutil.copyfile(registry.metadata_path(transfer_run["out"]), registry.metadata_path(out))
        return registry.read_metadata(out)

    monkeypatch.setattr(transfer, "train", replay)
    calls: list[tuple[int, int]] = []
    result = train(
        blob_data,
        tmp_path,
        arch="lite0",
        input_size=64,
        epochs=1,
        progress=lambda epoch, total, metrics: calls.append((epoch, total)),
    )
    assert asked == [
        (
            blob_data,
            tmp_path / "model.keras",
            {"seed": 0, "size": 64, "tune_epochs": 1, "arch": "lite0"},
        )
    ]
    rows = transfer_run["meta"]["training"]["history"]
    assert result.history["val_loss"] == [row["val_loss"] for row in rows]
    assert calls == [(len(rows), len(rows))]
    assert result.validation_fraction == transfer.VALIDATION_FRACTION
    # The same model on the same held-out images as the trainer's own evaluation.
    assert (
        result.metrics["n"] == len(result.validation_files) == transfer_run["meta"]["metrics"]["n"]
    )
    assert result.metrics["accuracy"] == transfer_run["meta"]["metrics"]["accuracy"]
    assert result.training_seconds == transfer_run["meta"]["training_seconds"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "history.json").is_file()


def test_training_can_continue_from_an_earlier_model(
    blob_data: Path, tiny_run: Any, tmp_path: Path
) -> None:
    """``initial_model`` starts from trained weights: the first epoch begins where they left off."""
    more = train(
        blob_data, tmp_path, arch="tiny", epochs=1, initial_model=tiny_run.model_file, report=False
    )
    assert more.metadata["initial_model"] == str(tiny_run.model_file)
    assert more.history["loss"][0] < tiny_run.history["loss"][0]
