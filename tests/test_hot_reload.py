"""A running worker picks up a newly promoted model between batches; --relabel catches up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from catdog.db import registry
from catdog.db.engine import make_engine, session_factory
from catdog.db.models import Image, ModelVersion, Prediction
from helpers import build_tiny_model

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _scan(env: dict[str, str], root: Path, *flags: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "catdog", "scan", str(root), "--wait", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr


def _promote(url: str, model: Path, models_dir: Path) -> str:
    engine = make_engine(url)
    with session_factory(engine).begin() as s:
        version = registry.register(s, model, models_dir).version
        registry.promote(s, version)
    engine.dispose()
    return version


def test_promoted_model_is_used_by_the_running_worker(
    worker_factory, cluster_env, tmp_path, image_factory, postgres_url
):
    """Batches after a promotion carry the new version; --relabel re-labels older results."""
    env = {k: v for k, v in cluster_env.items() if k != "CATDOG_MODEL"}
    models_dir = tmp_path / "registry"
    first = _promote(postgres_url, build_tiny_model(tmp_path / "a/m.keras"), models_dir)
    worker_factory(CATDOG_MODEL="", CATDOG_MODELS_DIR=str(models_dir))
    for i in range(4):
        image_factory(f"one/c{i}.jpg", "cat", seed=i)
        image_factory(f"two/c{i}.jpg", "cat", seed=10 + i)
    _scan(env, tmp_path / "one")
    # A model that calls everything a dog, so the switch is visible in the labels too.
    second = _promote(
        postgres_url, build_tiny_model(tmp_path / "b/m.keras", bias=(-50.0, 50.0)), models_dir
    )
    _scan(env, tmp_path / "two")

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Image.path, ModelVersion.version, Prediction.label)
            .join(Prediction, Prediction.image_id == Image.id)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        ).all()
    assert {(v, label) for _, v, label in rows} == {(first, "cat"), (second, "dog")}
    assert len(rows) == 8

    _scan(env, tmp_path / "one", "--relabel")
    with engine.connect() as conn:
        versions = conn.execute(
            select(ModelVersion.version).join(Prediction).where(Prediction.label == "dog")
        ).all()
    assert len(versions) == 8 and {v for (v,) in versions} == {second}
    engine.dispose()
