"""A human label wins over the model's in export, classify, report and status, and a relabel
by a newer model never overwrites it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from catdog.cli import main
from catdog.db import registry
from catdog.db.engine import make_engine, session_factory
from catdog.db.models import HumanLabel, ModelVersion, Prediction
from helpers import build_tiny_model
from runs import scan_with_broker, wait_for_run


def _answer(task: dict[str, Any], label: str, task_id: int) -> dict[str, Any]:
    """A Label Studio export entry: the task with one reviewer's choice."""
    return {
        **task,
        "id": task_id,
        "annotations": [
            {
                "id": 1000 + task_id,
                "completed_by": 1,
                "was_cancelled": False,
                "updated_at": "2026-01-01T00:00:00Z",
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ],
            }
        ],
    }


def review_all_as(runner: CliRunner, tmp_path: Path, truth: Callable[[str], str]) -> list[dict]:
    """Export every labeled image for review and import answers given by ``truth(path)``."""
    tasks_file = tmp_path / "tasks.json"
    out = runner.invoke(
        main, ["review", "export", "--limit", "100", "--no-audit", "-o", str(tasks_file)]
    )
    assert out.exit_code == 0, out.output
    tasks = json.loads(tasks_file.read_text())
    answers = [_answer(t, truth(t["data"]["catdog_path"]), i) for i, t in enumerate(tasks)]
    export = tmp_path / "ls-export.json"
    export.write_text(json.dumps(answers))
    imported = runner.invoke(main, ["review", "import", str(export)])
    assert imported.exit_code == 0, imported.output
    return tasks


def test_human_label_wins_in_export_report_and_status(
    env: Callable[..., None], sqlite_url: str, photo_dir: Path, tiny_model: Path, tmp_path: Path
):
    env(database_url=sqlite_url, model=str(tiny_model))
    runner = CliRunner()
    classified = runner.invoke(main, ["classify", str(photo_dir), "--format", "csv"])
    assert classified.exit_code == 0, classified.output
    model_rows = {r["path"]: r for r in csv.DictReader(io.StringIO(classified.stdout))}
    assert {r["source"] for r in model_rows.values()} == {
        next(iter(model_rows.values()))["model_version"]
    }
    # The reviewer says c0 is a dog (the tiny model said cat) and confirms the others.
    tasks = review_all_as(
        runner, tmp_path, lambda p: "dog" if p == "cats/c0.jpg" else p[:3].rstrip("s")
    )
    assert len(tasks) == 6  # the six good images; failures are never sent

    exported = runner.invoke(main, ["export", "--format", "jsonl"])
    rows = {
        Path(r["path"]).relative_to(photo_dir).as_posix(): r
        for r in map(json.loads, exported.stdout.splitlines())
    }
    assert rows["cats/c0.jpg"]["label"] == "dog" and rows["cats/c0.jpg"]["source"] == "human"
    assert rows["cats/c0.jpg"]["confidence"] is None
    assert rows["cats/c1.jpg"]["source"] == "human" and rows["cats/c1.jpg"]["label"] == "cat"
    assert (
        rows["broken.jpg"]["source"] == rows["broken.jpg"]["model_version"]
        and "error" in rows["broken.jpg"]
    )
    assert sum(r["label"] == "dog" for r in rows.values()) == 4

    report = runner.invoke(main, ["report", "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "report" / "index.html").read_text()
    assert '<b id="human">6</b>' in html
    assert "model labels changed by reviewers: 1 of 6 reviewed" in html
    status = runner.invoke(main, ["status"])
    assert "human labels: 6" in status.stdout and "changed by reviewers: 1 of 6" in status.stdout


def test_a_changed_file_loses_its_human_label_in_export(
    env: Callable[..., None], sqlite_url: str, photo_dir: Path, tiny_model: Path, tmp_path: Path
):
    """A human label describes the bytes the reviewer saw: new bytes, the model's label again."""
    from helpers import make_image

    env(database_url=sqlite_url, model=str(tiny_model))
    runner = CliRunner()
    assert runner.invoke(main, ["classify", str(photo_dir)]).exit_code == 0
    review_all_as(runner, tmp_path, lambda p: "dog")
    make_image(photo_dir / "cats/c0.jpg", "cat", size=(60, 50), seed=99)
    assert runner.invoke(main, ["classify", str(photo_dir)]).exit_code == 0
    exported = runner.invoke(main, ["export", "--format", "jsonl"])
    rows = {Path(r["path"]).name: r for r in map(json.loads, exported.stdout.splitlines())}
    assert rows["c0.jpg"]["source"] != "human" and rows["c0.jpg"]["label"] == "cat"
    assert rows["c1.jpg"]["source"] == "human" and rows["c1.jpg"]["label"] == "dog"


def _scan(env: dict[str, str], root: Path, relabel: bool = False) -> None:
    run = scan_with_broker(env, root, relabel=relabel)
    assert wait_for_run(env["CATDOG_DATABASE_URL"], run.run_id).finished


@pytest.mark.services
@pytest.mark.slow
def test_relabel_by_a_promoted_model_leaves_human_labels_alone(
    worker_factory, cluster_env, tmp_path, image_factory, postgres_url
):
    env = {k: v for k, v in cluster_env.items() if k != "CATDOG_MODEL"}
    models_dir = tmp_path / "registry"
    engine = make_engine(postgres_url)

    def promote(model: Path) -> str:
        with session_factory(engine).begin() as s:
            version = registry.register(s, model, models_dir).version
            registry.promote(s, version)
        return version

    promote(build_tiny_model(tmp_path / "a/m.keras"))
    worker_factory(CATDOG_MODEL="", CATDOG_MODELS_DIR=str(models_dir))
    for i in range(4):
        image_factory(f"photos/c{i}.jpg", "cat", seed=i)
    _scan(env, tmp_path / "photos")
    runner = CliRunner(env={k: v for k, v in env.items() if k.startswith("CATDOG_")})
    from catdog.settings import get_settings

    get_settings.cache_clear()
    try:
        review_all_as(runner, tmp_path, lambda p: "cat" if p != "c0.jpg" else "dog")
    finally:
        get_settings.cache_clear()
    before = create_engine(postgres_url)
    with before.connect() as c:
        humans = c.execute(select(HumanLabel.image_id, HumanLabel.label, HumanLabel.updated)).all()
    assert sorted(h.label for h in humans) == ["cat", "cat", "cat", "dog"]
    # A model that calls everything a dog, then a relabel of the whole root.
    second = promote(build_tiny_model(tmp_path / "b/m.keras", bias=(-50.0, 50.0)))
    _scan(env, tmp_path / "photos", relabel=True)
    with before.connect() as c:
        after = c.execute(select(HumanLabel.image_id, HumanLabel.label, HumanLabel.updated)).all()
        model_labels = (
            c.execute(
                select(Prediction.label).join(ModelVersion).where(ModelVersion.version == second)
            )
            .scalars()
            .all()
        )
    assert sorted(after) == sorted(humans)
    assert model_labels == ["dog"] * 4
    get_settings.cache_clear()
    exported = CliRunner(env={k: v for k, v in env.items() if k.startswith("CATDOG_")}).invoke(
        main, ["export", "--format", "jsonl"]
    )
    get_settings.cache_clear()
    rows = [json.loads(x) for x in exported.stdout.splitlines()]
    assert {r["source"] for r in rows} == {"human"}
    assert sorted(r["label"] for r in rows) == ["cat", "cat", "cat", "dog"]
    before.dispose()
    engine.dispose()
