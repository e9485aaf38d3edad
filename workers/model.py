"""A model loaded once per process, with its classes, and swapped when production changes.

CPU processes run the ``.tflite`` kept beside the ``.keras`` file on LiteRT and never import
TensorFlow; GPU processes run the ``.keras`` file on TensorFlow.
"""

from __future__ import annotations

import glob
import importlib.machinery
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catdog.db.registry import ModelNotFound, tflite_path

log = logging.getLogger(__name__)

#: Images per model call on a CPU: large enough to keep both cores busy, small enough that
#: decoding the next chunk overlaps with it.
CPU_PREDICT_BATCH = 64
#: Images per model call on a GPU, where bigger batches keep the device fed.
GPU_PREDICT_BATCH = 256


def configure_tensorflow(memory_limit_mb: int | None = None, mixed_precision: bool = False) -> int:
    """Set GPU memory growth (or a cap) and return the number of visible GPUs.

    Must run before the first tensor is created; one worker process per GPU, chosen with
    ``CUDA_VISIBLE_DEVICES``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            if memory_limit_mb:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory_limit_mb)]
                )
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            log.debug("GPU %s already configured", gpu.name)
    if gpus and mixed_precision:
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")
    return len(gpus)


@dataclass
class LoadedModel:
    """A model ready to predict, tagged with the registry version that made it."""

    version_id: int
    version: str
    file: str
    classes: list[str]
    input_size: tuple[int, int]
    #: The Keras model on the TensorFlow runtime; None on LiteRT.
    keras_model: Any
    predict_batch: int
    _lock: threading.Lock
    _fn: Any = None
    #: "tensorflow" or "tflite" (LiteRT): which kernels run the model.
    runtime: str = "tensorflow"

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a (N, H, W, 3) uint8 array."""
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out = []
        for start in range(0, len(pixels), self.predict_batch):
            chunk = pixels[start : start + self.predict_batch]
            out.append(self.predict_chunk(chunk))
        return np.concatenate(out)

    def predict_chunk(self, chunk: np.ndarray) -> np.ndarray:
        """One model call. TensorFlow gets the fixed batch (padded) so its graph is traced
        once; LiteRT pads to its own, smaller batch."""
        n = len(chunk)
        if self.runtime == "tflite":
            with self._lock:  # threads pool: one model call at a time per process
                probs = self._fn(chunk)
            return np.asarray(probs, dtype=np.float32)
        if n < self.predict_batch:
            pad = np.zeros((self.predict_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        with self._lock:
            if self._fn is None:
                import tensorflow as tf

                # A traced graph: no per-call Python overhead of eager Keras layers.
                self._fn = tf.function(lambda x: self.keras_model(x, training=False))
            probs = self._fn(chunk.astype(np.float32))
        return np.asarray(probs, dtype=np.float32)[:n]


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (found without importing it)."""
    # Asks sys.path directly: importlib.util.find_spec would also consult (and use up) the
    # one-shot finder with which catdog.quiet filters TensorFlow's import notices.
    return importlib.machinery.PathFinder.find_spec("tensorflow") is not None


def _gpu_device_present() -> bool:
    """Whether this host shows an NVIDIA GPU to CUDA (asked of the OS, not of TensorFlow)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or bool(glob.glob("/dev/nvidia[0-9]*"))


def tensorflow_sees_gpu(
    gpu_memory_limit_mb: int | None = None, mixed_precision: bool = False
) -> bool:
    """Whether TensorFlow is installed and sees a GPU (then it is configured for it).

    TensorFlow is imported only on a host that has a GPU: on the others its import would
    cost seconds and a gigabyte only to hear "no".
    """
    if not tensorflow_installed() or not _gpu_device_present():
        return False
    return configure_tensorflow(gpu_memory_limit_mb, mixed_precision) > 0


def load_model(
    file: str | Path,
    version_id: int,
    version: str,
    classes: list[str],
    input_size: tuple[int, int],
    predict_batch: int | None = None,
    gpu_memory_limit_mb: int | None = None,
    mixed_precision: bool = False,
    runtime: str = "auto",
) -> LoadedModel:
    """Load a model for ``runtime``: "tflite" (CPU, LiteRT, no TensorFlow), "tensorflow" (the
    ``.keras`` file in safe mode, for GPUs) or "auto" (TensorFlow where it sees a GPU).

    ``classes`` and ``input_size`` come from the model's sidecar. Without the ``.tflite``
    beside the file the CPU runtime falls back to TensorFlow where it is installed.
    """
    file = Path(file)
    if runtime == "auto":
        runtime = (
            "tensorflow" if tensorflow_sees_gpu(gpu_memory_limit_mb, mixed_precision) else "tflite"
        )
    if runtime == "tflite":
        lite = tflite_path(file)
        if lite.is_file():
            return _load_tflite(lite, file, version_id, version, classes, input_size, predict_batch)
        if not tensorflow_installed():
            raise ModelNotFound(
                f"{file}: no {lite.name} beside it for the CPU runtime, and TensorFlow is not "
                f"installed to run the .keras file. Convert it where TensorFlow is installed "
                f"(pip install 'catdog[train]'): catdog models convert {file}"
            )
        log.warning(
            "%s: no %s beside it; running the .keras file on TensorFlow (slower, more memory). "
            "Convert it once: catdog models convert %s",
            file,
            lite.name,
            file,
        )
    return _load_keras(
        file,
        version_id,
        version,
        classes,
        input_size,
        predict_batch,
        gpu_memory_limit_mb,
        mixed_precision,
    )


def _load_tflite(
    lite: Path,
    file: Path,
    version_id: int,
    version: str,
    classes: list[str],
    input_size: tuple[int, int],
    predict_batch: int | None,
) -> LoadedModel:
    from catdog.workers.runtime import TFLiteRunner

    runner = TFLiteRunner(lite, input_size)
    if runner.n_outputs != len(classes):
        raise ValueError(
            f"{lite}: model has {runner.n_outputs} outputs but metadata lists {classes}"
        )
    loaded = LoadedModel(
        version_id=version_id,
        version=version,
        file=str(file),
        classes=classes,
        input_size=input_size,
        keras_model=None,
        predict_batch=predict_batch or CPU_PREDICT_BATCH,
        _lock=threading.Lock(),
        _fn=runner,
        runtime="tflite",
    )
    log.info("loaded model %s (%s) from %s on LiteRT", version, ",".join(classes), lite)
    return loaded


def _load_keras(
    file: Path,
    version_id: int,
    version: str,
    classes: list[str],
    input_size: tuple[int, int],
    predict_batch: int | None,
    gpu_memory_limit_mb: int | None,
    mixed_precision: bool,
) -> LoadedModel:
    """The ``.keras`` file in safe mode (a model file cannot run code on load)."""
    if not tensorflow_installed():
        raise ModelNotFound(
            f"{file}: the TensorFlow runtime needs TensorFlow (pip install 'catdog[gpu]'), "
            "or use CATDOG_RUNTIME=tflite"
        )
    n_gpus = configure_tensorflow(gpu_memory_limit_mb, mixed_precision)
    import keras

    model = keras.saving.load_model(str(file), compile=False, safe_mode=True)
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(classes):
        raise ValueError(f"{file}: model has {n_out} outputs but metadata lists {classes}")
    batch = predict_batch or (GPU_PREDICT_BATCH if n_gpus else CPU_PREDICT_BATCH)
    loaded = LoadedModel(
        version_id=version_id,
        version=version,
        file=str(file),
        classes=classes,
        input_size=input_size,
        keras_model=model,
        predict_batch=batch,
        _lock=threading.Lock(),
    )
    log.info("loaded model %s (%s) from %s on TensorFlow", version, ",".join(classes), file)
    return loaded
