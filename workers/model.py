"""A Keras model loaded once per process, with its classes, and swapped when production changes."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    keras_model: Any
    predict_batch: int
    _lock: threading.Lock
    _fn: Any = None
    #: "tensorflow" or "tflite": which kernels run the model.
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
        """One model call; pads to the fixed batch so the graph is traced once."""
        n = len(chunk)
        if n < self.predict_batch:
            pad = np.zeros((self.predict_batch - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        with self._lock:  # threads pool: one model call at a time per process
            if self._fn is None:
                import tensorflow as tf

                # A traced graph: no per-call Python overhead of eager Keras layers.
                self._fn = tf.function(lambda x: self.keras_model(x, training=False))
            probs = self._fn(chunk.astype(np.float32))
        return np.asarray(probs, dtype=np.float32)[:n]


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
    """Load a ``.keras`` file in safe mode (a model file cannot run code on load)."""
    import keras

    n_gpus = configure_tensorflow(gpu_memory_limit_mb, mixed_precision)
    model = keras.saving.load_model(str(file), compile=False, safe_mode=True)
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(classes):
        raise ValueError(f"{file}: model has {n_out} outputs but metadata lists {classes}")
    batch = predict_batch or (GPU_PREDICT_BATCH if n_gpus else CPU_PREDICT_BATCH)
    loaded = LoadedModel(
        version_id, version, str(file), classes, input_size, model, batch, threading.Lock()
    )
    if runtime == "tflite" or (runtime == "auto" and not n_gpus):
        from catdog.workers.runtime import tflite_runner

        runner = tflite_runner(file, model, input_size)
        if runner is not None:
            loaded._fn, loaded.runtime = runner, "tflite"
    log.info("loaded model %s (%s) from %s on %s", version, ",".join(classes), file, loaded.runtime)
    return loaded
