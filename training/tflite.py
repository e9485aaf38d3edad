"""Convert a ``.keras`` model to the ``.tflite`` file CPU workers run, once, beside it.

Conversion needs TensorFlow; running the result needs only LiteRT. So a model is converted
where it is trained or registered, and CPU workers and ``catdog classify`` open the
``model.tflite`` kept next to ``model.keras`` without ever importing TensorFlow. A
conversion is written only after LiteRT's outputs on a probe batch match Keras'.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from catdog.db.registry import read_metadata, tflite_path
from catdog.quiet import filtered_stderr

log = logging.getLogger(__name__)

#: Images in the probe batch; the batch CPU workers run (``workers.runtime.TFLITE_BATCH``).
PROBE_BATCH = 16
#: Largest difference in any probability allowed between LiteRT and Keras on the probe.
TOLERANCE = 1e-3


class ConversionError(ValueError):
    """A model that did not convert to a ``.tflite`` giving the Keras model's probabilities."""


def convert(keras_model: Any) -> bytes:
    """TFLite flatbuffer of the model in inference mode (float32, dynamic batch)."""
    import tensorflow as tf

    # Keras prints "Saved artifact at ..." and the endpoints while exporting: stdout may carry
    # a command's rows, so that listing goes to the debug log instead.
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        blob = bytes(tf.lite.TFLiteConverter.from_keras_model(keras_model).convert())
    log.debug("TFLite conversion: %s", listing.getvalue())
    return blob


def run_litert(blob: bytes, pixels: np.ndarray) -> np.ndarray:
    """Probabilities of ``pixels`` from the flatbuffer on LiteRT (XNNPACK), one call."""
    from ai_edge_litert.interpreter import Interpreter

    with filtered_stderr():  # "Created TensorFlow Lite XNNPACK delegate for CPU."
        interp = Interpreter(model_content=blob, num_threads=os.cpu_count() or 1)
        inp = interp.get_input_details()[0]
        interp.resize_tensor_input(inp["index"], list(pixels.shape))
        interp.allocate_tensors()
    interp.set_tensor(inp["index"], pixels.astype(inp["dtype"]))
    interp.invoke()
    return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))


def max_difference(blob: bytes, keras_model: Any, input_size: tuple[int, int]) -> float:
    """Largest probability difference between LiteRT and Keras on a seeded probe batch."""
    rng = np.random.default_rng(0)
    probe = rng.uniform(0, 255, (PROBE_BATCH, *input_size, 3)).astype(np.float32)
    expected = np.asarray(keras_model(probe, training=False), dtype=np.float32)
    got = run_litert(blob, probe)
    if got.shape != expected.shape:
        raise ConversionError(f"TFLite gives outputs of shape {got.shape}, Keras {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def _as_float32(obj: Any) -> Any:
    """A serialized Keras object with every mixed-precision dtype policy made float32."""
    if isinstance(obj, list):
        return [_as_float32(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if obj.get("class_name") == "DTypePolicy" and str(obj["config"]["name"]).startswith("mixed_"):
        return {**obj, "config": {**obj["config"], "name": "float32"}}
    return {k: _as_float32(v) for k, v in obj.items()}


def float32_model(model: Any) -> Any:
    """``model`` computing in float32 (the same object when it already does).

    A model trained on a GPU computes in float16 (mixed precision); TFLite's built-in
    kernels have no float16 convolutions, so it is converted from a float32 copy with the
    same (float32) weights: what a CPU runs, at full precision.
    """
    import keras

    serialized = keras.saving.serialize_keras_object(model)
    full = _as_float32(serialized)
    if full == serialized:
        return model
    copy = keras.saving.deserialize_keras_object(full, safe_mode=True)
    copy.set_weights(model.get_weights())
    return copy


def export_tflite(keras_file: str | Path) -> Path:
    """Write ``X.tflite`` beside ``X.keras`` and return its path.

    Raises :class:`ConversionError` when the converter fails or LiteRT's probabilities
    differ from Keras' by more than :data:`TOLERANCE`; then nothing is written, and a
    ``.tflite`` older than the ``.keras`` file is removed, so no worker runs stale weights.
    """
    keras_file = Path(keras_file)
    target = tflite_path(keras_file)
    try:
        blob, diff = _checked_conversion(keras_file)
    except ConversionError:
        if target.is_file() and target.stat().st_mtime < keras_file.stat().st_mtime:
            target.unlink()
        raise
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(target)  # atomic: a worker never opens half a file
    log.info("wrote %s (LiteRT within %.1g of Keras)", target, diff)
    return target


def _checked_conversion(keras_file: Path) -> tuple[bytes, float]:
    """The flatbuffer and its largest difference from Keras on the probe."""
    from catdog.training.evaluate import load_model

    size = read_metadata(keras_file)["input_size"]
    input_size = (int(size[0]), int(size[1]))
    model = float32_model(load_model(keras_file))
    try:
        blob = convert(model)
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds, with pages of MLIR
        log.debug("TFLite conversion of %s failed", keras_file, exc_info=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ConversionError(f"{keras_file}: TFLite conversion failed: {first}") from exc
    diff = max_difference(blob, model, input_size)
    if not diff <= TOLERANCE:  # also catches NaN
        raise ConversionError(
            f"{keras_file}: its TFLite conversion differs from Keras by {diff:.2g} "
            f"(allowed {TOLERANCE:g}); CPU workers cannot run it without TensorFlow"
        )
    return blob, diff


def ensure_tflite(keras_file: str | Path) -> Path:
    """The ``.tflite`` beside ``keras_file``, converted unless one newer than it is there."""
    keras_file = Path(keras_file)
    target = tflite_path(keras_file)
    if target.is_file() and target.stat().st_mtime >= keras_file.stat().st_mtime:
        return target
    return export_tflite(keras_file)
