"""Session fixtures of the training tests, loaded with ``pytest_plugins``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training_data import make_dataset


@pytest.fixture(scope="session")
def blob_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-per-folder set of 24 cats and 24 dogs, shared by the session's tests."""
    return make_dataset(tmp_path_factory.mktemp("blobs") / "data")


@pytest.fixture(scope="session")
def tiny_run(blob_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A ``tiny`` model trained for two epochs on ``blob_data``, with its progress calls."""
    from catdog.training.train import train

    calls: list[tuple[int, int, dict[str, float]]] = []
    result = train(
        blob_data,
        tmp_path_factory.mktemp("tiny_run"),
        arch="tiny",
        epochs=2,
        seed=0,
        progress=lambda epoch, epochs, metrics: calls.append((epoch, epochs, metrics)),
    )
    result.progress_calls = calls  # type: ignore[attr-defined]
    return result
