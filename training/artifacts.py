"""What a training run leaves beside its ``model.keras``: history, metrics, predictions, report."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catdog.training import datasets
from catdog.training.report import write_training_report
from catdog.training.tflite import ConversionError, export_tflite

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: files, validation metrics, history and timing."""

    out_dir: Path
    model_file: Path
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    training_seconds: float
    report: Path | None = None
    validation_files: list[str] = field(default_factory=list)
    #: The share held out by the seeded split (the training task re-creates that split).
    validation_fraction: float = datasets.VALIDATION_FRACTION


def finish_run(
    out: Path,
    history: dict[str, list[float]],
    validation: tuple[np.ndarray, np.ndarray, list[str]],
    metrics: dict[str, Any],
    training_seconds: float,
    validation_fraction: float,
    title: str,
    report: bool = True,
) -> TrainResult:
    """Write history, validation metrics and predictions, the report and the ``model.tflite``
    CPU workers run beside the saved ``model.keras``; ``validation`` is
    ``(y_true, probs, files)``.
    """
    y_val, probs, files = validation
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    (out / "validation_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # Kept so the report can be redrawn without predicting again.
    np.savez_compressed(
        out / "validation_predictions.npz", y_true=y_val, probs=probs, files=np.array(files)
    )
    model_file = out / "model.keras"
    metadata = json.loads(model_file.with_suffix(".json").read_text())
    page = None
    if report:
        page = write_training_report(
            out, history, np.asarray(y_val), probs, metadata["classes"], files, metrics, title=title
        )
    try:
        export_tflite(model_file)
    except ConversionError as exc:  # the trained model is still good on TensorFlow
        log.warning("%s (model.keras is saved and runs on TensorFlow)", exc)
    return TrainResult(
        out,
        model_file,
        metadata,
        metrics,
        history,
        training_seconds,
        page,
        list(files),
        validation_fraction,
    )
