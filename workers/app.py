"""The workers' Celery app, built from the environment (``celery -A catdog.workers.app``).

Importing this module never imports TensorFlow; the inference and training tasks load it
lazily inside the worker process (TensorFlow is not fork-safe).
"""

from __future__ import annotations

from catdog.broker import make_celery
from catdog.settings import get_settings

app = make_celery(get_settings())
