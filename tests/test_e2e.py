"""End to end: a real worker process, Redis and PostgreSQL, driven by `catdog scan --wait`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from catdog.db.models import Prediction, ScanRun
from catdog.ops.exporter import metrics_text
from catdog.settings import Settings

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _catdog(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "catdog", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_scan_wait_labels_every_image_exactly_once(
    worker_factory, cluster_env, photo_dir, image_factory, postgres_url
):
    """Good images are labeled, broken ones failed with a reason, each exactly once."""
    for i in range(10):
        image_factory(f"photos/more/m{i}.jpg", "dog" if i % 2 else "cat", seed=100 + i)
    worker_factory()
    result = _catdog(cluster_env, "scan", str(photo_dir), "--wait")
    assert result.returncode == 0, result.stderr
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        preds = conn.execute(select(Prediction.image_id, Prediction.label, Prediction.error)).all()
        run = conn.execute(select(ScanRun)).one()
    assert len(preds) == 18 and len({p.image_id for p in preds}) == 18
    assert sum(p.error is not None for p in preds) == 2
    assert (run.done, run.failed, run.total) == (16, 2, 18) and run.finished is not None

    again = _catdog(cluster_env, "scan", str(photo_dir), "--wait")
    assert again.returncode == 0 and "0 queued" in again.stdout
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction)) == 18
    exported = _catdog(cluster_env, "export", "--format", "jsonl")
    assert len(exported.stdout.splitlines()) == 18
    with Session(engine) as session:
        metrics = metrics_text(session, Settings(broker_url=cluster_env["CATDOG_BROKER_URL"]))
    engine.dispose()
    worker_lines = [x for x in metrics.splitlines() if x.startswith("catdog_worker_images_total{")]
    assert len(worker_lines) == 1 and float(worker_lines[0].rsplit(" ", 1)[1]) == 18


def test_status_shows_the_finished_run_with_its_counts(
    worker_factory, cluster_env, photo_dir: Path, postgres_url: str
):
    """`catdog status --format json` lists the one run, finished: 6 labeled, 2 failed, 0 left."""
    worker_factory()
    assert _catdog(cluster_env, "scan", str(photo_dir), "--wait").returncode == 0
    result = _catdog(cluster_env, "status", "--format", "json")
    assert result.returncode == 0, result.stderr
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        run = conn.execute(select(ScanRun)).one()
    engine.dispose()
    (shown,) = json.loads(result.stdout)
    assert {k: shown[k] for k in ("run", "root", "state", "eta_s")} == {
        "run": run.id,
        "root": run.root,
        "state": "finished",
        "eta_s": 0,
    }
    assert (shown["done"], shown["failed"], shown["pending"], shown["skipped"]) == (6, 2, 0, 0)
