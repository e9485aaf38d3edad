"""Temperature scaling folded into the last layer, and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catdog.training.report import plot_reliability, reliability_bins
from catdog.training.transfer import apply_temperature, fit_temperature, fold_temperature


def _overconfident(n: int = 4000, temperature: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from calibrated probabilities, reported sharpened by ``temperature``."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (n, 2))
    calibrated = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (rng.random(n) < calibrated[:, 1]).astype(int)
    sharp = np.exp(logits * temperature)
    return sharp / sharp.sum(axis=1, keepdims=True), labels


def test_the_fitted_temperature_undoes_a_known_overconfidence() -> None:
    probs, labels = _overconfident(temperature=2.5)
    assert abs(fit_temperature(probs, labels) - 2.5) < 0.25


def test_a_calibrated_model_keeps_a_temperature_near_one() -> None:
    probs, labels = _overconfident(temperature=1.0)
    assert abs(fit_temperature(probs, labels) - 1.0) < 0.1


def test_folding_the_temperature_into_the_dense_layer_gives_the_scaled_probabilities() -> None:
    """softmax((Wx + b) / T) from the layer itself equals apply_temperature of its output."""
    import keras

    dense = keras.layers.Dense(2, activation="softmax")
    x = np.random.default_rng(1).normal(0, 3, (8, 5)).astype(np.float32)
    before = np.asarray(dense(x))
    fold_temperature(dense, 1.7)
    np.testing.assert_allclose(np.asarray(dense(x)), apply_temperature(before, 1.7), atol=1e-5)
    # Argmax never changes: calibration moves confidences, not labels.
    assert (np.asarray(dense(x)).argmax(1) == before.argmax(1)).all()


def test_reliability_bins_count_every_prediction_once() -> None:
    probs, labels = _overconfident()
    confidence = probs.max(1)
    rows = reliability_bins(probs.argmax(1) == labels, confidence)
    assert sum(n for _, _, n in rows) == len(labels)
    assert all(0.5 <= c <= 1.0 and 0.0 <= a <= 1.0 for c, a, _ in rows)


def test_the_reliability_diagram_is_drawn_for_each_series(tmp_path: Path) -> None:
    probs, labels = _overconfident()
    name = plot_reliability(
        labels, {"raw": probs, "calibrated": apply_temperature(probs, 2.5)}, tmp_path / "r.png"
    )
    assert name == "r.png" and (tmp_path / "r.png").stat().st_size > 5000
