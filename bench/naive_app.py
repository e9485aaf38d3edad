"""What a typical tutorial builds: one Celery task per image, full-size PIL decode, one INSERT each.

Used by bench/throughput.py as the baseline ("naive") that catdog's cluster path is compared to.
"""

from __future__ import annotations

import os

import numpy as np
import psycopg
from celery import Celery
from PIL import Image

app = Celery("naive", broker=os.environ["NAIVE_BROKER_URL"])
app.conf.update(
    task_serializer="json", accept_content=["json"], worker_pool="solo", task_default_queue="naive"
)
_model = None


def _get_model():  # type: ignore[no-untyped-def]
    global _model
    if _model is None:
        import keras

        _model = keras.saving.load_model(os.environ["NAIVE_MODEL"], compile=False)
    return _model


@app.task(name="naive.classify_one")
def classify_one(path: str) -> None:
    """Label one image and insert one row."""
    model = _get_model()
    size = tuple(model.inputs[0].shape[1:3])
    img = Image.open(path).convert("RGB").resize(size[::-1])
    probs = model.predict(np.asarray(img, dtype=np.float32)[None], verbose=0)[0]
    with psycopg.connect(os.environ["NAIVE_PG_DSN"]) as conn:
        conn.execute(
            "INSERT INTO naive_results (path, label, confidence) VALUES (%s, %s, %s)",
            (path, int(np.argmax(probs)), float(np.max(probs))),
        )
