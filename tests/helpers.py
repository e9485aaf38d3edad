"""Plain test helpers: generated images, a tiny model, real worker processes.

Fixtures live in ``conftest.py`` and build on these; tests import them from here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(path: Path, kind: str, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """Write a synthetic 'cat' (red blob) or 'dog' (blue blob) image; format from the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    channel = 0 if kind == "cat" else 2
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, channel] = 200 + rng.integers(0, 55)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def build_tiny_model(path: Path, seed: int = 0, bias: tuple[float, float] = (0.0, 0.0)) -> Path:
    """Save a small untrained-but-deterministic classifier (32x32 -> cat/dog) and its sidecar.

    Its dense layer reads mean red minus mean blue, so red blobs are 'cat', blue are 'dog'.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("head").set_weights(
        [np.array([[8.0, -8.0], [0.0, 0.0], [-8.0, 8.0]], dtype=np.float32), np.array(bias)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    meta = {"arch": "tiny", "classes": ["cat", "dog"], "input_size": [32, 32], "metrics": {}}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def make_cluster_env(broker_url: str, postgres_url: str, model: Path) -> dict[str, str]:
    """Environment of a cluster on ``broker_url`` and a migrated ``postgres_url``."""
    from catdog.db.engine import make_engine
    from catdog.db.migrate import upgrade

    engine = make_engine(postgres_url)
    upgrade(engine)
    engine.dispose()
    return {
        **os.environ,
        "CATDOG_BROKER_URL": broker_url,
        "CATDOG_DATABASE_URL": postgres_url,
        "CATDOG_MODEL": str(model),
        "CATDOG_BATCH_SIZE": "4",
        "CATDOG_VISIBILITY_TIMEOUT": "5",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


class WorkerProcess:
    """A real ``catdog worker`` process, as a user would start it."""

    def __init__(self, env: dict[str, str], queues: str, log: Path, name: str) -> None:
        self.log = log
        self.name = name
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "catdog",
                "worker",
                "-Q",
                queues,
                "-n",
                f"{name}@%h",
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the worker logs that it is ready to consume."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.log.read_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int | None = None, timeout: float = 30) -> None:
        """Send ``sig`` (SIGTERM by default) and wait for the process to end."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
