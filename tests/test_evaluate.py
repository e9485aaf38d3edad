"""Metrics in plain numpy, and ``evaluate`` of a saved model on a folder."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from catdog.training.evaluate import compute_metrics, evaluate, expected_calibration_error, roc_auc
from training_data import make_dataset

#: Shared fixtures: blob_data (generated images) and tiny_run (a model trained on them).
pytest_plugins = ["training_fixtures"]


def test_perfect_predictions_score_perfectly() -> None:
    """Right and certain predictions give accuracy, F1 and AUC of 1 and no loss."""
    metrics = compute_metrics(
        [0, 1, 1, 0], np.array([[1, 0], [0, 1], [0, 1], [1, 0]]), ["cat", "dog"]
    )
    assert metrics["accuracy"] == metrics["f1"] == metrics["roc_auc"] == 1.0
    assert metrics["log_loss"] < 1e-6 and metrics["ece"] < 1e-6
    assert metrics["confusion"] == [[2, 0], [0, 2]]
    assert metrics["per_class"]["dog"]["support"] == 2


def test_roc_auc_is_the_share_of_correctly_ordered_pairs() -> None:
    """AUC equals the brute-force pairwise definition, ties counting one half."""
    rng = np.random.default_rng(0)
    positive = rng.random(60) > 0.5
    scores = np.round(rng.random(60), 1)  # rounded: plenty of ties
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(positive, scores) == pytest.approx(expected)
    assert roc_auc(np.ones(3, bool), np.ones(3)) is None


def test_log_loss_precision_recall_and_calibration_have_known_values() -> None:
    """A hand-checked case: one mistake among four predictions."""
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    metrics = compute_metrics([0, 0, 1, 1], probs, ["cat", "dog"])
    assert metrics["accuracy"] == 0.75
    assert metrics["per_class"]["cat"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["dog"]["recall"] == 0.5
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.7, 0.4]))
    assert metrics["log_loss"] == pytest.approx(expected_loss)
    assert expected_calibration_error(
        np.array([True, False]), np.array([0.8, 0.8]), bins=10
    ) == pytest.approx(0.3)


def test_a_confidence_threshold_reports_the_uncertain_rate() -> None:
    """Predictions below the threshold are uncertain; accuracy is also given on the rest."""
    probs = np.array([[0.95, 0.05], [0.55, 0.45], [0.4, 0.6], [0.1, 0.9]])
    metrics = compute_metrics([0, 1, 1, 1], probs, ["cat", "dog"], threshold=0.8)
    assert metrics["uncertain_rate"] == 0.5
    assert metrics["accuracy_when_sure"] == 1.0


def test_evaluate_scores_a_saved_model_on_a_folder(tiny_run: Any, blob_data: Path) -> None:
    """Every image of the folder is scored and the metrics are in range."""
    metrics = evaluate(tiny_run.model_file, blob_data, threshold=0.6)
    assert metrics["n"] == 48 and metrics["unreadable"] == 0
    assert 0.8 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["ece"] <= 1.0
    assert set(metrics["per_class"]) == {"cat", "dog"}
    assert 0.0 <= metrics["uncertain_rate"] <= 1.0


def test_evaluate_matches_classes_by_name_and_leaves_out_unknown_ones(
    tiny_run: Any, tmp_path: Path
) -> None:
    """Folders may hold more classes than the model knows: those images are not scored."""
    root = make_dataset(tmp_path / "d", per_class=4, classes=("bird", "cat", "dog"))
    metrics = evaluate(tiny_run.model_file, root)
    assert metrics["n"] == 8
    assert list(metrics["per_class"]) == ["cat", "dog"]


def test_evaluate_leaves_out_the_files_workers_refuse(
    tiny_run: Any, tmp_path: Path, env: Any
) -> None:
    """Broken files and images over the pixel limit are counted unreadable, not scored."""
    root = make_dataset(tmp_path / "d", per_class=3)
    (root / "cat" / "cat.broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (200, 100), "blue").save(root / "dog" / "dog.big.png")
    env(max_image_pixels=str(100 * 100))  # the generated photos are 40x40
    metrics = evaluate(tiny_run.model_file, root)
    assert metrics["n"] == 6 and metrics["unreadable"] == 2
