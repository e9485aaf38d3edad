"""Fast CPU inference: the same Keras model run by TensorFlow Lite's XNNPACK kernels.

On a CPU-only host XNNPACK runs EfficientNet-Lite0 about 1.5x faster than TensorFlow's own
kernels (measured on 2 cores: 187 vs 120 images/s at 192 px), with the same outputs to 1e-5.
The conversion takes a few seconds and is cached next to the other converted weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from catdog.quiet import filtered_stderr

log = logging.getLogger(__name__)

#: Where converted models are kept (shared with the Lite0 weight converter).
DEFAULT_CACHE_DIR = Path("~/.cache/catdog")

#: Images per TFLite invocation. Its arena holds every intermediate tensor of the batch:
#: 16 keeps a worker near 1.7 GB at 192 px (64 needs 4.7 GB) at the same speed.
TFLITE_BATCH = 16

Runner = Callable[[np.ndarray], np.ndarray]


def cache_path(model_file: str | Path) -> Path:
    """The cached .tflite for this exact model file (keyed by its content)."""
    digest = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("CATDOG_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()
    return root / "tflite" / f"{digest}.tflite"


def convert(keras_model: Any) -> bytes:
    """TFLite flatbuffer of the model in inference mode (float32, dynamic batch)."""
    import tensorflow as tf

    # Keras prints "Saved artifact at ..." and the endpoints while exporting: stdout carries
    # `classify` output, so that listing goes to the debug log instead.
    listing = io.StringIO()
    with contextlib.redirect_stdout(listing):
        blob = bytes(tf.lite.TFLiteConverter.from_keras_model(keras_model).convert())
    log.debug("TFLite conversion: %s", listing.getvalue())
    return blob


def agrees(run: Runner, keras_model: Any, input_size: tuple[int, int], batch: int) -> bool:
    """Whether the converted model gives Keras' probabilities on a probe batch."""
    probe = np.random.default_rng(0).uniform(0, 255, (batch, *input_size, 3)).astype(np.float32)
    expected = np.asarray(keras_model(probe, training=False))
    return bool(np.allclose(run(probe), expected, atol=1e-3))


def tflite_runner(
    model_file: str | Path, keras_model: Any, input_size: tuple[int, int]
) -> Runner | None:
    """A predict function on XNNPACK (any batch size), or None if TFLite is unavailable."""
    try:
        import tensorflow as tf

        cached = cache_path(model_file)
        if cached.is_file():
            blob = cached.read_bytes()
        else:
            blob = convert(keras_model)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(blob)
            tmp.replace(cached)  # atomic: several workers may convert at once
        # tf.lite's deprecation notice (LiteRT) and "Created TensorFlow Lite XNNPACK delegate".
        with warnings.catch_warnings(), filtered_stderr():
            warnings.simplefilter("ignore")
            interp = tf.lite.Interpreter(model_content=blob, num_threads=os.cpu_count() or 1)
            inp = interp.get_input_details()[0]["index"]
            out = interp.get_output_details()[0]["index"]
            interp.resize_tensor_input(inp, [TFLITE_BATCH, *input_size, 3])
            interp.allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - any failure: TensorFlow's own kernels still work
        log.warning("TFLite runtime unavailable (%s); using TensorFlow", exc)
        return None

    def run(x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n % TFLITE_BATCH:
            pad = np.zeros((TFLITE_BATCH - n % TFLITE_BATCH, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        parts = []
        for start in range(0, len(x), TFLITE_BATCH):
            interp.set_tensor(inp, x[start : start + TFLITE_BATCH])
            interp.invoke()
            parts.append(np.array(interp.get_tensor(out)))
        return np.concatenate(parts)[:n]

    # A conversion that changed the model's answers is never used.
    if not agrees(run, keras_model, input_size, TFLITE_BATCH):
        log.warning("TFLite conversion disagrees with Keras; using TensorFlow")
        return None
    log.info("CPU inference on TFLite/XNNPACK (%s)", cached)
    return run
