"""Metrics of a model on labeled images: accuracy, precision/recall/F1, ROC AUC, log loss,
calibration error, per class, in plain numpy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catdog.training.datasets import LabeledImages, discover

#: Bins of the expected calibration error (the usual choice in the literature).
ECE_BINS = 15
#: Probabilities are clipped this far from 0 and 1 before taking logs.
LOG_EPS = 1e-7
#: The headline metrics, in the order reports and commands show them.
HEADLINE_METRICS = ("n", "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")
#: Images per model call while evaluating.
EVAL_BATCH_SIZE = 64


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None with a single class."""
    positive = np.asarray(positive, bool)
    scores = np.asarray(scores, float)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank within runs of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, bool)
    order = np.argsort(-np.asarray(scores, float), kind="mergesort")
    hits = positive[order]
    tps = np.r_[0, np.cumsum(hits)]
    fps = np.r_[0, np.cumsum(~hits)]
    return fps / max(1, fps[-1]), tps / max(1, tps[-1])


def expected_calibration_error(
    correct: np.ndarray, confidence: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def compute_metrics(
    y_true: Sequence[int] | np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """All metrics of predicted ``probs`` (n x classes) against class indices ``y_true``.

    With a ``threshold``, images whose top probability is below it count as ``uncertain``:
    the result adds their rate and the accuracy on the remaining ones.
    """
    y = np.asarray(y_true, int)
    p = np.asarray(probs, float)
    if len(y) == 0:
        raise ValueError("no predictions to score")
    pred = p.argmax(axis=1)
    confidence = p.max(axis=1)
    correct = pred == y
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        tp = int(np.sum((pred == k) & (y == k)))
        fp = int(np.sum((pred == k) & (y != k)))
        fn = int(np.sum((pred != k) & (y == k)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(np.sum(y == k)),
            "roc_auc": roc_auc(y == k, p[:, k]),
        }
    aucs = [m["roc_auc"] for m in per_class.values() if m["roc_auc"] is not None]
    confusion = np.zeros((len(classes), len(classes)), int)
    np.add.at(confusion, (y, pred), 1)
    metrics: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(correct.mean()),
        "precision": float(np.mean([m["precision"] for m in per_class.values()])),
        "recall": float(np.mean([m["recall"] for m in per_class.values()])),
        "f1": float(np.mean([m["f1"] for m in per_class.values()])),
        # Binary: the AUC of the second class's score (equal to the first's); else macro.
        "roc_auc": (
            per_class[classes[1]]["roc_auc"]
            if len(classes) == 2
            else float(np.mean(aucs))
            if aucs
            else None
        ),
        "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], LOG_EPS, 1.0)))),
        "ece": expected_calibration_error(correct, confidence),
        "confusion": confusion.tolist(),
        "per_class": per_class,
    }
    if threshold is not None:
        sure = confidence >= threshold
        metrics["threshold"] = float(threshold)
        metrics["uncertain_rate"] = float(1.0 - sure.mean())
        metrics["accuracy_when_sure"] = float(correct[sure].mean()) if sure.any() else None
    return metrics


def load_model(model_file: str | Path) -> Any:
    """Load a ``.keras`` model the way workers do: safe mode, no optimizer."""
    import keras

    return keras.saving.load_model(str(model_file), safe_mode=True, compile=False)


def predict(
    model: Any,
    files: Sequence[str],
    labels: Sequence[int],
    image_size: Sequence[int],
    batch_size: int = EVAL_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities for ``files``: ``(y_true, probs, kept)``, ``kept`` indexing ``files``.

    Files are decoded as the workers decode them (:func:`catdog.training.datasets.make_pipeline`
    calls :func:`catdog.images.decode`), so these are the probabilities ``catdog classify``
    serves. Files that cannot be read or decoded are left out of all three.
    """
    from catdog.training.datasets import make_pipeline

    ds = make_pipeline(
        files,
        labels,
        (int(image_size[0]), int(image_size[1])),
        batch_size,
        cache=False,
        with_index=True,
    )
    ys, ps, kept = [], [], []
    for images, batch_labels, index in ds:
        ps.append(np.asarray(model(images, training=False), dtype=float))
        ys.append(batch_labels.numpy())
        kept.append(index.numpy())
    if not ps:
        return np.zeros(0, int), np.zeros((0, 2)), np.zeros(0, int)
    return np.concatenate(ys), np.concatenate(ps), np.concatenate(kept)


def evaluate_on(
    model_file: str | Path,
    images: LabeledImages,
    indices: Sequence[int] | None = None,
    threshold: float | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, Any]:
    """Metrics of the model in ``model_file`` on ``images`` (only ``indices``, if given).

    Labels are matched to the model's classes by name, so models with another class order
    are scored on the same images; images of classes the model lacks are left out.
    """
    from catdog.db.registry import read_metadata

    meta = read_metadata(Path(model_file))
    classes = list(meta["classes"])
    chosen = range(len(images)) if indices is None else indices
    files, labels = [], []
    for i in chosen:
        name = images.classes[images.labels[i]]
        if name in classes:
            files.append(str(images.root / images.paths[i]))
            labels.append(classes.index(name))
    if not files:
        raise ValueError(f"{model_file}: none of the images belong to its classes {classes}")
    model = load_model(model_file)
    y, probs, _kept = predict(model, files, labels, meta["input_size"], batch_size)
    if len(y) == 0:
        raise ValueError("none of the images could be decoded")
    metrics = compute_metrics(y, probs, classes, threshold)
    metrics["unreadable"] = len(files) - len(y)
    metrics["left_out"] = len(chosen) - len(files)
    return metrics


def evaluate(
    model_file: str | Path,
    data_dir: str | Path,
    threshold: float | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, Any]:
    """Metrics of the model in ``model_file`` on every labeled image under ``data_dir``."""
    from catdog.db.registry import read_metadata

    classes = read_metadata(Path(model_file))["classes"]
    images = discover(data_dir, classes=classes)
    metrics = evaluate_on(model_file, images, threshold=threshold, batch_size=batch_size)
    metrics["model"] = str(model_file)
    metrics["data"] = str(data_dir)
    return metrics
