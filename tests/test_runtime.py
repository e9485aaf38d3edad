"""Which runtime a worker loads: LiteRT on the ``.tflite`` beside the model, or TensorFlow."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from catdog.db.registry import ModelNotFound, tflite_path
from catdog.training.tflite import export_tflite
from catdog.workers import model as model_module
from catdog.workers.model import load_model
from catdog.workers.runtime import TFLITE_BATCH


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A copy of the tiny model with its ``.tflite`` beside it."""
    folder = tmp_path_factory.mktemp("converted")
    for suffix in (".keras", ".json"):
        shutil.copy(tiny_model.with_suffix(suffix), folder / f"tiny{suffix}")
    export_tflite(folder / "tiny.keras")
    return folder / "tiny.keras"


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host without a GPU, whatever this one has."""
    monkeypatch.setattr(model_module, "_gpu_device_present", lambda: False)


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)


def test_litert_and_tensorflow_runtimes_agree(converted):
    """Both runtimes label the same pixels with the same probabilities (to 1e-5)."""
    fast = load_model(converted, 1, "v", ["cat", "dog"], (32, 32), 8, runtime="tflite")
    slow = load_model(converted, 1, "v", ["cat", "dog"], (32, 32), 8, runtime="tensorflow")
    assert (fast.runtime, slow.runtime) == ("tflite", "tensorflow")
    assert fast.keras_model is None
    pixels = _pixels(5)
    np.testing.assert_allclose(fast.predict(pixels), slow.predict(pixels), atol=1e-5)


def test_auto_runtime_without_a_gpu_runs_the_tflite_file(converted, no_gpu):
    """On a CPU-only host "auto" is LiteRT, for any number of images per call."""
    loaded = load_model(converted, 1, "v", ["cat", "dog"], (32, 32))
    assert loaded.runtime == "tflite"
    for n in (0, 1, TFLITE_BATCH, 2 * TFLITE_BATCH + 3):
        probs = loaded.predict(_pixels(n))
        assert probs.shape == (n, 2)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert loaded.predict_chunk(_pixels(3)).shape == (3, 2)


def test_without_a_tflite_file_the_cpu_runtime_falls_back_to_tensorflow_with_a_warning(
    tiny_model, tmp_path, no_gpu, caplog
):
    """A model never converted still labels where TensorFlow is installed; one warning says
    how to convert it."""
    bare = tmp_path / "bare.keras"
    shutil.copy(tiny_model, bare)
    shutil.copy(tiny_model.with_suffix(".json"), bare.with_suffix(".json"))
    with caplog.at_level(logging.WARNING, logger="catdog.workers.model"):
        loaded = load_model(bare, 1, "v", ["cat", "dog"], (32, 32))
    assert loaded.runtime == "tensorflow"
    assert loaded.predict(_pixels(2)).shape == (2, 2)
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("catdog")
    ]
    assert len(warnings) == 1 and f"catdog models convert {bare}" in warnings[0].getMessage()


def test_without_a_tflite_file_or_tensorflow_the_error_says_how_to_convert(
    tiny_model, tmp_path, no_gpu, monkeypatch
):
    """A CPU-only install cannot run a bare ``.keras`` file: ModelNotFound names the fix."""
    monkeypatch.setattr(model_module, "tensorflow_installed", lambda: False)
    bare = tmp_path / "bare.keras"
    shutil.copy(tiny_model, bare)
    with pytest.raises(ModelNotFound, match="catdog models convert"):
        load_model(bare, 1, "v", ["cat", "dog"], (32, 32))


def test_a_tflite_file_with_other_classes_than_its_metadata_is_refused(converted):
    """Three classes in the sidecar, two outputs in the file: a clear error, not wrong labels."""
    with pytest.raises(ValueError, match="2 outputs"):
        load_model(converted, 1, "v", ["cat", "dog", "bird"], (32, 32), runtime="tflite")


def test_a_host_that_hides_its_gpus_from_cuda_has_none(monkeypatch):
    """CUDA_VISIBLE_DEVICES="" or "-1" means no GPU, whatever the hardware."""
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not model_module._gpu_device_present()


def test_the_tflite_file_sits_beside_the_keras_file():
    """``model.keras`` runs on CPUs as ``model.tflite`` in the same folder."""
    assert tflite_path(Path("/m/v1/model.keras")) == Path("/m/v1/model.tflite")
