"""Train a classifier on a labeled image folder and write the model, its metadata and a report.

``train(...)`` is the one entry point, used by ``catdog train`` and by the training task.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import keras
from rich.console import Console

from catdog.training import datasets
from catdog.training.archs import ARCHS
from catdog.training.artifacts import TrainResult, finish_run
from catdog.training.evaluate import HEADLINE_METRICS, compute_metrics, predict
from catdog.training.model import DEFAULT_INPUT_SIZE, SCRATCH_WIDTHS, make_model, save_model
from catdog.training.progress import EpochProgress, ProgressFn

#: Epochs, batch sizes and peak learning rates when the caller gives none: views of the
#: architecture table (catdog.training.archs), where each architecture sets its own.
DEFAULT_EPOCHS = {a.name: a.epochs for a in ARCHS.values()}
DEFAULT_BATCH_SIZE = {a.name: a.batch_size for a in ARCHS.values()}
DEFAULT_LEARNING_RATE = {a.name: a.learning_rate for a in ARCHS.values()}
#: Epochs without a better validation loss before training stops.
EARLY_STOPPING_PATIENCE = 4
#: Early stopping watches only the second half of the epochs: while the cosine schedule's
#: learning rate is high, validation loss jumps about without meaning the run has peaked.
EARLY_STOPPING_FROM = 0.5
#: AdamW decoupled weight decay: a light regulariser for the small from-scratch CNN.
WEIGHT_DECAY = 0.01
#: lite0: share of the epochs spent training only the new head on a frozen backbone.
HEAD_EPOCHS_SHARE = 0.4
#: lite0: the blocks unfrozen for fine-tuning (the last stages, the most task-specific).
FINE_TUNE_PREFIXES = ("block6", "block7", "top")
#: lite0: fine-tuning learning rate relative to the head phase's.
FINE_TUNE_LR_FACTOR = 0.1
#: Learning rate of a run that continues from a trained model, relative to a fresh run's:
#: small steps adapt it to new data without unlearning what it knew.
CONTINUE_LR_FACTOR = 0.1


def _optimizer(learning_rate: float, epochs: int, steps: int) -> keras.optimizers.Optimizer:
    warmup = min(steps, max(1, epochs * steps // 10))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        decay_steps=max(1, epochs * steps - warmup),
        alpha=0.01,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=WEIGHT_DECAY)


def _fit(
    model: keras.Model,
    train_ds: Any,
    val_ds: Any,
    *,
    epochs: int,
    first_epoch: int,
    total_epochs: int,
    steps: int,
    learning_rate: float,
    callbacks: list[Any],
    progress: ProgressFn | None,
    console: Console | None,
) -> dict[str, list[float]]:
    model.compile(
        optimizer=_optimizer(learning_rate, epochs, steps),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss",
        patience=EARLY_STOPPING_PATIENCE,
        restore_best_weights=True,
        start_from_epoch=int(epochs * EARLY_STOPPING_FROM),
    )
    bar = EpochProgress(total_epochs, steps, first_epoch, progress, console)
    with warnings.catch_warnings():
        # tf.data pipelines are shuffled and sized by themselves; Keras warns regardless.
        warnings.filterwarnings("ignore", message=".*(shuffle=True|ran out of data).*")
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            verbose=0,
            callbacks=[*callbacks, stopper, bar],
        )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _set_lite0_phase(model: keras.Model, fine_tune: bool) -> None:
    backbone = model.get_layer("backbone")
    backbone.trainable = fine_tune
    if fine_tune:
        for layer in backbone.layers:
            # BatchNorm stays frozen: small batches would wreck the ImageNet statistics.
            layer.trainable = layer.name.startswith(FINE_TUNE_PREFIXES) and not isinstance(
                layer, keras.layers.BatchNormalization
            )


def _fit_phases(
    arch: str,
    model: keras.Model,
    train_ds: Any,
    val_ds: Any,
    epochs: int,
    learning_rate: float,
    common: dict[str, Any],
) -> dict[str, list[float]]:
    """One phase for CNNs; for lite0 the head on a frozen backbone, then the top blocks too."""
    if ARCHS[arch].trainer != "transfer":
        return _fit(
            model,
            train_ds,
            val_ds,
            epochs=epochs,
            first_epoch=0,
            learning_rate=learning_rate,
            **common,
        )
    head_epochs = max(1, round(epochs * HEAD_EPOCHS_SHARE))
    _set_lite0_phase(model, fine_tune=False)
    history = _fit(
        model,
        train_ds,
        val_ds,
        epochs=head_epochs,
        first_epoch=0,
        learning_rate=learning_rate,
        **common,
    )
    if epochs > head_epochs:
        _set_lite0_phase(model, fine_tune=True)
        more = _fit(
            model,
            train_ds,
            val_ds,
            epochs=epochs - head_epochs,
            first_epoch=head_epochs,
            learning_rate=learning_rate * FINE_TUNE_LR_FACTOR,
            **common,
        )
        history = {k: history.get(k, []) + more.get(k, []) for k in history | more}
    return history


def _check_same_classes(model_file: Path, classes: list[str]) -> None:
    """A model continues only on data with its own classes, in its own order."""
    from catdog.db.registry import read_metadata

    known = [str(c) for c in read_metadata(model_file).get("classes", [])]
    if known != classes:
        raise ValueError(
            f"the data's classes {classes} are not the model's {known}: a model can only "
            "continue on its own classes; train a new one with --arch"
        )


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    arch: str = "scratch",
    epochs: int | None = None,
    input_size: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    *,
    validation_fraction: float = datasets.VALIDATION_FRACTION,
    learning_rate: float | None = None,
    widths: tuple[int, ...] | None = None,
    console: Console | None = None,
    report: bool = True,
    initial_model: str | Path | None = None,
) -> TrainResult:
    """Train an ``arch`` model on ``data_dir`` and write it with its report to ``out_dir``.

    The split is stratified and keeps near-duplicates together; the best epoch by
    validation loss is kept. ``console`` shows a progress bar and a line per epoch.
    ``initial_model`` (a ``.keras`` file with the same classes) continues training from
    its weights instead of random ones; its input size wins over ``input_size``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    start: keras.Model | None = None
    if initial_model is not None:
        start = keras.saving.load_model(Path(initial_model), safe_mode=True, compile=False)
        input_size = int(start.input_shape[1])
    elif ARCHS[arch].trainer == "transfer":
        from catdog.training.train_lite0 import train_cached_lite0

        cached = train_cached_lite0(
            data_dir, out_dir, epochs, input_size, seed, progress, report, arch=arch
        )
        if cached is not None:
            return cached
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = datasets.discover(data_dir)
    train_idx, val_idx = datasets.split(images, validation_fraction, seed)
    if initial_model is not None:
        _check_same_classes(Path(initial_model), list(images.classes))
    epochs = epochs or DEFAULT_EPOCHS[arch]
    size = input_size or DEFAULT_INPUT_SIZE[arch]
    batch_size = batch_size or DEFAULT_BATCH_SIZE[arch]
    learning_rate = learning_rate or DEFAULT_LEARNING_RATE[arch] * (
        CONTINUE_LR_FACTOR if initial_model is not None else 1.0
    )

    keras.utils.set_random_seed(seed)
    import tensorflow as tf

    previous_policy = keras.mixed_precision.global_policy()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if on_gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        started = time.perf_counter()
        train_files, val_files = images.files(train_idx), images.files(val_idx)
        train_labels = [images.labels[i] for i in train_idx]
        val_labels = [images.labels[i] for i in val_idx]
        train_ds = datasets.make_pipeline(
            train_files, train_labels, (size, size), batch_size, shuffle=True, seed=seed
        )
        val_ds = datasets.make_pipeline(val_files, val_labels, (size, size), batch_size)
        steps = math.ceil(len(train_files) / batch_size)
        model = start or make_model(
            arch, (size, size, 3), len(images.classes), seed=seed, widths=widths or SCRATCH_WIDTHS
        )
        checkpoint = out / "checkpoint.keras"
        saver = keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True)
        common: dict[str, Any] = {
            "total_epochs": epochs,
            "steps": steps,
            "callbacks": [saver],
            "progress": progress,
            "console": console,
        }
        history = _fit_phases(arch, model, train_ds, val_ds, epochs, learning_rate, common)
        training_seconds = time.perf_counter() - started
        best = keras.saving.load_model(checkpoint, safe_mode=True, compile=False)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    y_val, probs, kept = predict(best, val_files, val_labels, (size, size))
    kept_files = [val_files[i] for i in kept]
    metrics = compute_metrics(y_val, probs, images.classes)
    metadata = {
        "arch": arch,
        "classes": list(images.classes),
        "input_size": [size, size],
        "metrics": {k: metrics[k] for k in HEADLINE_METRICS},
        "data_fingerprint": datasets.fingerprint(images),
        "data": str(Path(data_dir).resolve()),
        "training_seconds": round(training_seconds, 1),
        "seed": seed,
        "epochs": len(next(iter(history.values()), [])),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "initial_model": str(initial_model) if initial_model else None,
        "validation_fraction": validation_fraction,
        "split": "stratified by class, near-duplicate pairs kept together",
        "n_train": len(train_idx),
        "n_validation": len(val_idx),
        "params": int(best.count_params()),
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }
    save_model(best, out / "model.keras", metadata)
    checkpoint.unlink(missing_ok=True)
    return finish_run(
        out,
        history,
        (y_val, probs, kept_files),
        metrics,
        training_seconds,
        validation_fraction,
        f"catdog {arch} model",
        report,
    )


def copy_outputs(result: TrainResult, target: str | Path) -> Path:
    """Copy a run's model, metadata, history and report files into ``target``."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for path in result.out_dir.iterdir():
        if path.suffix in (".keras", ".tflite", ".json", ".html", ".png"):
            shutil.copy2(path, target / path.name)
    return target
