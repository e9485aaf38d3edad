"""The training task ``catdog.train``: train, compare with production, register, maybe promote.

The Celery task is a thin shell over :func:`run_training`, which tests call directly on
SQLite. TensorFlow is imported only when a job runs, never when the worker imports this.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import shared_task

from catdog.broker import TRAIN_TASK
from catdog.db import registry
from catdog.db.engine import engine_for, session_factory
from catdog.db.migrate import upgrade
from catdog.db.models import TrainingRun
from catdog.settings import Settings, get_settings
from catdog.training.datasets import HOLDOUT_FRACTION, ReviewData, discover, review_data

#: ``retrain --from-reviews``: the new model may lose at most this much accuracy on the
#: validation split (the data beyond the reviewed images) and still be promoted for being
#: better on the held-out human labels.
VALIDATION_SLACK = 0.01
#: Key of the held-out human labels' metrics inside a training run's metrics.
HOLDOUT_KEY = "human_holdout"

#: Metrics copied into the task result and the ``--wait`` summary.
SUMMARY_KEYS = ("accuracy", "roc_auc", "log_loss", "f1", "ece", "n")


def summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline numbers of a metrics dict."""
    if metrics is None:
        return None
    return {k: metrics.get(k) for k in SUMMARY_KEYS}


def is_better(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """True when ``new`` beats ``old``: higher accuracy, then lower log loss on a tie."""
    if old is None:
        return True
    if new["accuracy"] != old["accuracy"]:
        return bool(new["accuracy"] > old["accuracy"])
    return bool(new["log_loss"] < old["log_loss"])


def default_data_dir(session: Any, settings: Settings) -> Path:
    """The folder the current model was trained on (for ``catdog retrain`` without --data)."""
    try:
        current = registry.current_version(session, settings)
        data = registry.read_metadata(Path(current.file)).get("data")
    except registry.ModelNotFound:
        data = None
    if not data:
        raise ValueError("no --data given and the current model does not record its data folder")
    return Path(data)


def starting_point(session: Any, settings: Settings, arch: str | None) -> tuple[str, Path | None]:
    """(arch, model to continue from). A given ``arch`` trains a new model from its usual
    start; without one the job continues from the production model, in its architecture."""
    if arch is not None:
        return arch, None
    try:
        current = registry.current_version(session, settings)
    except registry.ModelNotFound as exc:
        raise ValueError(f"no current model to continue from ({exc}): pass --arch") from exc
    from catdog.training.archs import ARCHS

    arch = registry.read_metadata(Path(current.file)).get("arch")
    if arch not in ARCHS:
        raise ValueError(
            f"the current model {current.version} does not say which architecture it is "
            f"({arch!r}): pass --arch to train a new model"
        )
    return str(arch), Path(current.file)


def run_training(
    data_dir: str | Path | None = None,
    arch: str | None = None,
    epochs: int | None = None,
    input_size: int | None = None,
    seed: int = 0,
    force: bool = False,
    *,
    task_id: str | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    settings: Settings | None = None,
    batch_size: int | None = None,
    from_reviews: bool = False,
    holdout_fraction: float | None = None,
) -> dict[str, Any]:
    """Train a model, evaluate it and the current model on the same validation split,
    register it and promote it if it is better (or ``force``); record a ``training_runs`` row.

    Without ``arch`` the new model continues from the production model's weights (same
    architecture, input size and classes); with one, a new model of that architecture.

    ``from_reviews`` trains on the human labels (plus ``data_dir`` when given) and holds a
    stratified share of them out: both models are also scored there, and the new one is
    promoted only if it is better on those held-out human labels and not worse than
    ``VALIDATION_SLACK`` in accuracy on the validation split (see :func:`review_verdict`).
    """
    from catdog.training.datasets import split
    from catdog.training.evaluate import evaluate_on
    from catdog.training.tflite import ensure_tflite
    from catdog.training.train import train

    settings = settings or get_settings()
    engine = engine_for(settings.database())
    upgrade(engine)
    sessions = session_factory(engine)
    with sessions() as session:
        if from_reviews:
            data = Path(data_dir) if data_dir else None
        else:
            data = Path(data_dir) if data_dir else default_data_dir(session, settings)
        arch, initial_model = starting_point(session, settings, arch)
        described = f"human labels + {data}" if from_reviews and data else "human labels"
        run = TrainingRun(
            task_id=task_id,
            data=described if from_reviews else str(data),
            arch=arch,
            status="running",
        )
        session.add(run)
        session.commit()
        run_id = run.id
    try:
        out_dir = Path(settings.models_dir) / "runs" / f"run-{run_id}"
        reviews = None
        if from_reviews:
            reviews = _review_data(
                sessions,
                settings,
                out_dir / "reviews",
                data,
                initial_model,
                seed,
                HOLDOUT_FRACTION if holdout_fraction is None else holdout_fraction,
            )
            data = reviews.train_dir
        assert data is not None
        result = train(
            data,
            out_dir,
            arch=arch,
            epochs=epochs,
            input_size=input_size,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            initial_model=initial_model,
        )
        # train() scored the new model on its validation split; the same seed gives the same
        # split here, so the current model is scored on exactly those images.
        new_metrics = result.metrics
        images = discover(data)
        _, val_idx = split(images, result.validation_fraction, seed)
        with sessions() as session:
            baseline_version, baseline_metrics, note = None, None, ""
            current_file: Path | None = None
            try:
                current = registry.current_version(session, settings)
                baseline_version = current.version
                current_file = Path(current.file)
                baseline_metrics = evaluate_on(Path(current.file), images, val_idx)
            except registry.ModelNotFound:
                note = "no current model to compare with"
            except (OSError, ValueError) as exc:
                note = f"current model {baseline_version} could not be evaluated: {exc}"
            # CPU workers run the .tflite beside the file: a version they could not run is
            # never registered (a conversion that disagrees with Keras fails the run here).
            ensure_tflite(result.model_file)
            version = registry.register(session, result.model_file, Path(settings.models_dir))
            if reviews is not None:
                new_metrics, baseline_metrics, better, gate = _review_gate(
                    reviews, result.model_file, current_file, new_metrics, baseline_metrics
                )
                note = "; ".join(m for m in (note, gate) if m)
            else:
                better = is_better(new_metrics, baseline_metrics)
            promoted = better or force
            if promoted:
                registry.promote(session, version.version)
            verdict = (
                ("promoted" if better else "promoted (forced)")
                if promoted
                else (f"kept {baseline_version}: it is at least as good")
            )
            message = "; ".join(m for m in (verdict, note) if m)
            done = session.get(TrainingRun, run_id)
            assert done is not None
            done.status = "succeeded"
            done.finished = datetime.now(UTC)
            done.model_version_id = version.id
            done.metrics = new_metrics
            done.baseline_metrics = (
                {"version": baseline_version, **baseline_metrics} if baseline_metrics else {}
            )
            done.promoted = promoted
            done.message = message
            session.commit()
            outcome = {
                "run_id": run_id,
                "version": version.version,
                "promoted": promoted,
                "metrics": summary(new_metrics),
                "baseline_version": baseline_version,
                "baseline_metrics": summary(baseline_metrics),
                "message": message,
                "training_seconds": result.training_seconds,
            }
            if reviews is not None:
                outcome[HOLDOUT_KEY] = {
                    "new": summary(new_metrics.get(HOLDOUT_KEY)),
                    "baseline": summary((baseline_metrics or {}).get(HOLDOUT_KEY)),
                }
            return outcome
    except BaseException as exc:
        with sessions() as session:
            failed = session.get(TrainingRun, run_id)
            if failed is not None and failed.status == "running":
                failed.status = "failed"
                failed.finished = datetime.now(UTC)
                failed.message = f"{type(exc).__name__}: {exc}"
                session.commit()
        raise


def _review_data(
    sessions: Any,
    settings: Settings,
    out: Path,
    data: Path | None,
    initial_model: Path | None,
    seed: int,
    holdout_fraction: float,
) -> ReviewData:
    """The folder of human labels (+ ``data``) to train on, and the held-out human labels."""
    from catdog.db.reviews import training_labels

    with sessions() as session:
        rows = training_labels(session)
    if initial_model is not None:
        classes = [str(c) for c in registry.read_metadata(initial_model)["classes"]]
    else:
        found = {r.label for r in rows}
        if data is not None:
            found |= set(discover(data).classes)
        classes = sorted(found)
    return review_data(
        rows,
        out,
        classes,
        data_dir=data,
        holdout_fraction=holdout_fraction,
        seed=seed,
        max_bytes=settings.max_file_bytes,
        store_roots=settings.store_roots,
    )


def review_verdict(
    new_holdout: dict[str, Any],
    old_holdout: dict[str, Any] | None,
    new_val: dict[str, Any],
    old_val: dict[str, Any] | None,
) -> tuple[bool, str]:
    """(better, why): better on the held-out human labels (accuracy, then log loss), and
    at most ``VALIDATION_SLACK`` less accurate on the validation split."""
    if old_holdout is None or old_val is None:
        return True, "no current model scored on the held-out human labels"
    on_humans = is_better(new_holdout, old_holdout)
    kept_up = new_val["accuracy"] >= old_val["accuracy"] - VALIDATION_SLACK
    why = (
        f"held-out human labels: accuracy {new_holdout['accuracy']:.3f} vs "
        f"{old_holdout['accuracy']:.3f} (n={new_holdout.get('n')}); validation: "
        f"{new_val['accuracy']:.3f} vs {old_val['accuracy']:.3f}"
    )
    if on_humans and not kept_up:
        why += f" (more than {VALIDATION_SLACK:.0%} worse)"
    return on_humans and kept_up, why


def _review_gate(
    reviews: ReviewData,
    new_file: Path,
    current_file: Path | None,
    new_metrics: dict[str, Any],
    baseline_metrics: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any] | None, bool, str]:
    """Score both models on the held-out human labels; (new metrics, baseline metrics,
    better, why), each metrics dict with the held-out scores under ``HOLDOUT_KEY``."""
    from catdog.training.evaluate import evaluate_on

    counts = {
        "trained_human_labels": reviews.trained,
        "data_images": reviews.given,
        "unreadable_human_labels": reviews.unreadable,
    }
    if reviews.holdout is None:
        better = is_better(new_metrics, baseline_metrics)
        return (
            {**new_metrics, **counts},
            baseline_metrics,
            better,
            ("too few human labels to hold any out: judged on the validation split only"),
        )
    new_holdout = evaluate_on(new_file, reviews.holdout)
    old_holdout = None
    if current_file is not None and baseline_metrics is not None:
        old_holdout = evaluate_on(current_file, reviews.holdout)
    better, why = review_verdict(new_holdout, old_holdout, new_metrics, baseline_metrics)
    new = {**new_metrics, **counts, HOLDOUT_KEY: new_holdout}
    old = {**baseline_metrics, HOLDOUT_KEY: old_holdout} if baseline_metrics else None
    return new, old, better, why


# A training job runs far longer than the broker's visibility timeout: acknowledged on
# receipt, so Redis does not hand the same job to the worker again while it still runs.
@shared_task(bind=True, name=TRAIN_TASK, acks_late=False, reject_on_worker_lost=False)
def train_task(
    self: Any,
    data_dir: str | None = None,
    arch: str | None = None,
    epochs: int | None = None,
    input_size: int | None = None,
    seed: int = 0,
    force: bool = False,
    from_reviews: bool = False,
) -> dict[str, Any]:
    """Celery shell of :func:`run_training`, reporting epochs as ``PROGRESS`` state."""

    def progress(epoch: int, total: int, metrics: dict[str, float]) -> None:
        self.update_state(
            state="PROGRESS", meta={"epoch": epoch, "epochs": total, "metrics": metrics}
        )

    return run_training(
        data_dir,
        arch,
        epochs,
        input_size,
        seed,
        force,
        task_id=self.request.id,
        progress=progress,
        from_reviews=from_reviews,
    )
