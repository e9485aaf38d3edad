"""The experiment scores behind TRAINING_NOTES.md's table: shifts, confident errors, table."""

from __future__ import annotations

import numpy as np

from catdog.training.experiments import _summary, shift_rows, table


def _probs(right: list[bool], confidence: float, truth: np.ndarray) -> np.ndarray:
    """Rows giving ``confidence`` to the true class where ``right``, to the other elsewhere."""
    p = np.full((len(truth), 2), 1 - confidence)
    for i, (ok, y) in enumerate(zip(right, truth, strict=True)):
        p[i, y if ok else 1 - y] = confidence
    return p


def test_the_summary_names_the_worst_shift_and_counts_confident_errors() -> None:
    truth = np.array([0, 1, 0, 1])
    shifts = {
        "blur": _probs([True, False, False, True], 0.99, truth),  # 2 errors, both confident
        "grey": _probs([True, True, True, False], 0.9, truth),  # 1 error, not confident
    }
    val = _probs([True, True, True, True], 0.95, truth)
    s = _summary(val, truth, shifts, truth, ["cat", "dog"])
    assert s["validation"]["accuracy"] == 1.0 and s["validation"]["confident_errors"] == 0
    assert s["worst_shift"] == "blur" and s["worst_accuracy"] == 0.5
    assert s["shift_mean_accuracy"] == 0.625
    assert s["shift_confident_errors"] == 2
    assert s["per_shift"] == {"blur": 0.5, "grey": 0.75}


def test_the_shifted_photos_are_the_robustness_benchmarks_choice() -> None:
    """600 validation rows, sorted, drawn with seed 0 as bench/robustness.py draws them."""
    val = list(range(1000, 5000, 2))
    rows = shift_rows(val)
    expected = np.sort(np.random.default_rng(0).choice(val, 600, replace=False))
    np.testing.assert_array_equal(rows, expected)
    assert set(rows) <= set(val)


def test_the_table_has_one_row_per_experiment_with_its_figures() -> None:
    truth = np.array([0, 1])
    s = _summary(
        _probs([True, False], 0.99, truth),
        truth,
        {"x": _probs([True, True], 0.6, truth)},
        truth,
        ["cat", "dog"],
    )
    rows = [
        {
            "name": "a",
            "temperature": 0.5,
            "raw": s,
            "calibrated": s,
            "hard_slice": {"accuracy": 0.25},
        }
    ]
    text = table(rows)
    lines = text.strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith("| a | 0.5000 |")
    assert "| 0.2500 | 0.50 |" in lines[2]
