"""The TFLite/XNNPACK runtime gives the same probabilities as TensorFlow's kernels."""

from __future__ import annotations

import numpy as np

from catdog.workers.model import load_model


def test_tflite_and_tensorflow_runtimes_agree(tiny_model, tmp_path, monkeypatch):
    """Both runtimes label the same pixels with the same probabilities (to 1e-5)."""
    monkeypatch.setenv("CATDOG_CACHE_DIR", str(tmp_path))
    pixels = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    fast = load_model(tiny_model, 1, "v", ["cat", "dog"], (32, 32), 8, runtime="tflite")
    slow = load_model(tiny_model, 1, "v", ["cat", "dog"], (32, 32), 8, runtime="tensorflow")
    assert (fast.runtime, slow.runtime) == ("tflite", "tensorflow")
    np.testing.assert_allclose(fast.predict(pixels), slow.predict(pixels), atol=1e-5)
    assert list((tmp_path / "tflite").glob("*.tflite"))  # converted once, cached
