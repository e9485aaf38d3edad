"""`catdog retrain --wait` served by a real training worker on Redis and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, select

from catdog.db.models import ModelVersion, TrainingRun
from training_data import make_dataset

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_a_retrain_job_trains_registers_and_promotes(
    worker_factory, cluster_env, tmp_path, postgres_url
):
    """The job trains on the worker, records a training run and promotes the new version."""
    data = make_dataset(tmp_path / "labeled", per_class=12)
    models_dir = tmp_path / "registry"
    worker_factory(queues="training", CATDOG_MODELS_DIR=str(models_dir))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "catdog",
            "retrain",
            "--data",
            str(data),
            "--arch",
            "tiny",
            "--epochs",
            "1",
            "--force",
            "--wait",
        ],
        env=cluster_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert result["promoted"] is True

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        run = conn.execute(select(TrainingRun)).one()
        prod = conn.execute(select(ModelVersion).where(ModelVersion.is_production)).one()
    engine.dispose()
    assert run.status == "succeeded" and run.promoted and run.arch == "tiny"
    assert run.model_version_id == prod.id and 0.0 <= run.metrics["accuracy"] <= 1.0
    assert run.baseline_metrics  # the current model was scored on the same validation split
    assert (models_dir / f"{prod.version}.keras").is_file()
