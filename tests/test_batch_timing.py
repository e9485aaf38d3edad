"""Batch latency describes labeling: a model switch's loading time is reported on its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from catdog.db.migrate import upgrade
from catdog.producer.scan import scan
from catdog.settings import Settings
from catdog.stores import LocalStore
from catdog.workers import inference
from catdog.workers.inference import BatchResult, InferenceContext, classify_batch

#: How long the fake model load takes: the 19 s the issue saw on a model switch.
LOAD_S = 19.0


class SlowLoadClock:
    """``time.perf_counter`` that jumps ``LOAD_S`` seconds whenever a model is loaded."""

    def __init__(self) -> None:
        self.offset = 0.0

    def perf_counter(self) -> float:
        return time.perf_counter() + self.offset


def test_a_batch_that_loads_its_model_reports_the_load_apart_from_its_latency(
    photo_dir: Path, sqlite_url: str, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first batch waits 19 s for its model: its ``seconds`` exclude them and
    ``load_seconds`` holds them; the next batch loads nothing."""
    clock = SlowLoadClock()
    real_load = inference.load_model

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        clock.offset += LOAD_S
        return real_load(*args, **kwargs)

    monkeypatch.setattr(inference, "load_model", slow_load)
    monkeypatch.setattr(inference, "time", clock)
    settings = Settings(database_url=sqlite_url, model=tiny_model, batch_size=4)  # type: ignore[arg-type]
    ctx = InferenceContext.create(settings)
    upgrade(ctx.engine)
    results: list[BatchResult] = []
    scan(
        ctx.sessions,
        ctx.settings,
        [LocalStore(photo_dir)],
        lambda run, ids: results.append(classify_batch(ctx, run, ids)),
    )
    ctx.close()
    first, second = results
    assert first.load_seconds >= LOAD_S
    assert first.seconds < LOAD_S / 2
    assert second.load_seconds == 0.0
    assert first.as_dict()["load_seconds"] == round(first.load_seconds, 3)
