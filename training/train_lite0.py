"""``train(arch="lite0"|"lite1"|"lite2")`` through the cached-feature trainer of
``training.transfer``.

Fine-tuning an EfficientNet-Lite end to end on a CPU costs a full backbone pass per image and epoch;
``training.transfer`` runs the frozen backbone once and trains the top blocks on its cache.
This module adapts it to :func:`training.train.train`'s outputs (history, validation
metrics, report, :class:`~catdog.training.artifacts.TrainResult`). Where
``training.transfer`` is not installed, ``train`` falls back to its generic two-phase loop.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from catdog.db.registry import read_metadata
from catdog.training import datasets
from catdog.training.artifacts import finish_run
from catdog.training.evaluate import compute_metrics, load_model, predict
from catdog.training.progress import ProgressFn


def _history(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    # transfer records one dict per epoch; the report wants one list per metric.
    keys = {k for row in rows for k in row}
    return {k: [float(row[k]) for row in rows if k in row] for k in sorted(keys)}


def train_cached_lite0(
    data_dir: str | Path,
    out_dir: str | Path,
    epochs: int | None,
    input_size: int | None,
    seed: int,
    progress: ProgressFn | None,
    report: bool,
    arch: str = "lite0",
) -> Any:
    """Train ``arch`` with ``training.transfer.train``; None when that trainer is unavailable.

    ``epochs`` sets the fine-tuning epochs (the head's epochs on pooled features are cheap
    and fixed by ``training.transfer``). Progress is reported once, when training ends.
    """
    try:
        from catdog.training import transfer
    except ImportError:
        return None
    trainer = getattr(transfer, "train", None)
    if trainer is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"seed": seed, "arch": arch}
    if input_size:
        kwargs["size"] = input_size
    if epochs:
        kwargs["tune_epochs"] = epochs
    started = time.perf_counter()
    meta = trainer(data_dir, out / "model.keras", **kwargs)
    training_seconds = float(meta.get("training_seconds", time.perf_counter() - started))
    model_file = out / "model.keras"
    fraction = float(getattr(transfer, "VALIDATION_FRACTION", datasets.VALIDATION_FRACTION))
    history = _history(meta.get("training", {}).get("history", []))

    images = datasets.discover(data_dir)
    _, val_idx = datasets.split(images, fraction, seed)
    val_files = images.files(val_idx)
    size = read_metadata(model_file)["input_size"]  # as saved, whatever the trainer returned
    y_val, probs, kept = predict(
        load_model(model_file), val_files, [images.labels[i] for i in val_idx], size
    )
    kept_files = [val_files[i] for i in kept]
    metrics = compute_metrics(y_val, probs, images.classes)
    if progress is not None:
        done = len(next(iter(history.values()), [])) or 1
        progress(done, done, {k: v[-1] for k, v in history.items()})
    return finish_run(
        out,
        history,
        (y_val, probs, kept_files),
        metrics,
        training_seconds,
        fraction,
        f"catdog {arch} model",
        report,
    )
