"""``catdog models list``: the production version is always marked, and accuracies say what
they were measured on."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from catdog.cli import main
from catdog.db import registry
from catdog.db.engine import make_engine, session_factory
from catdog.db.migrate import upgrade
from catdog.ops.model_list import BUNDLED_DEFAULT
from catdog.settings import BUNDLED_MODEL, Settings
from helpers import build_tiny_model

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="no bundled model here")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def listed() -> list[dict[str, Any]]:
    result = invoke("models", "list", "--format", "json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def tiny_with_metrics(path: Path, bias: float, n: int, accuracy: float, data: str) -> Path:
    """A tiny model whose metadata says it scored ``accuracy`` on ``n`` images of ``data``."""
    model = build_tiny_model(path, bias=(bias, 0.0))
    meta = json.loads(model.with_suffix(".json").read_text())
    meta.update(metrics={"n": n, "accuracy": accuracy}, data_fingerprint=data)
    model.with_suffix(".json").write_text(json.dumps(meta))
    return model


@pytest.fixture
def registry_env(sqlite_url: str, tmp_path: Path, env: Callable[..., None]) -> str:
    """An empty, migrated registry in a SQLite file, as ``catdog`` commands see it."""
    env(database_url=sqlite_url, models_dir=str(tmp_path / "models"))
    engine = make_engine(sqlite_url)
    upgrade(engine)
    engine.dispose()
    return sqlite_url


def test_before_any_promotion_the_bundled_model_is_listed_as_production(
    registry_env: str,
) -> None:
    """An empty registry lists the bundled model, marked production (bundled default), with
    its validation set's size."""
    (row,) = listed()
    meta = json.loads(BUNDLED_MODEL.with_suffix(".json").read_text())
    assert row["version"].startswith("bundled-") and row["registered"] is False
    assert row["production"] is True and row["bundled_default"] is True
    assert row["validation_images"] == meta["metrics"]["n"]
    assert row["validation_data"] == meta["data_fingerprint"]
    assert BUNDLED_DEFAULT in invoke("models", "list").stdout


def test_the_registered_bundled_model_is_production_until_a_promotion(
    registry_env: str, tiny_model: Path
) -> None:
    """Once a scan has registered the bundled model it stays marked production, until
    another version is promoted."""
    engine = make_engine(registry_env)
    with session_factory(engine).begin() as session:
        bundled = registry.current_version(session, Settings(database_url=registry_env)).version  # type: ignore[arg-type]
    engine.dispose()
    assert [(r["version"], r["production"], r["registered"]) for r in listed()] == [
        (bundled, True, True)
    ]
    assert invoke("models", "promote", str(tiny_model)).exit_code == 0
    production = {r["version"]: (r["production"], r["bundled_default"]) for r in listed()}
    assert production.pop(bundled) == (False, False)
    assert list(production.values()) == [(True, False)]


def test_accuracies_from_different_validation_sets_are_starred_with_a_footnote(
    registry_env: str, tmp_path: Path
) -> None:
    """0.9859 on 3,749 photos and 1.0000 on 80 are shown with their set sizes, starred, and
    a footnote says they do not compare."""
    big = tiny_with_metrics(tmp_path / "big/m.keras", 0.0, 3749, 0.9859, "286dc4f3aa0bdb84")
    small = tiny_with_metrics(tmp_path / "small/m.keras", 1.0, 80, 1.0, "9e0a11c2d3b4f5a6")
    for model in (big, small):
        assert invoke("models", "promote", str(model)).exit_code == 0
    rows = listed()
    assert [(r["accuracy"], r["validation_images"]) for r in rows] == [(0.9859, 3749), (1.0, 80)]
    assert [r["validation_data"] for r in rows] == ["286dc4f3aa0bdb84", "9e0a11c2d3b4f5a6"]
    table = invoke("models", "list").stdout
    assert "0.9859 *" in table and "1.0000 *" in table
    assert "80 and 3,749 images" in table.splitlines()[-1]


def test_accuracies_on_the_same_validation_set_carry_no_footnote(
    registry_env: str, tmp_path: Path
) -> None:
    """Two versions scored on the same data and set size compare: no star, no footnote."""
    for i in range(2):
        model = tiny_with_metrics(tmp_path / f"{i}/m.keras", float(i), 80, 0.9 + i / 20, "same")
        assert invoke("models", "promote", str(model)).exit_code == 0
    table = invoke("models", "list").stdout
    assert "0.9000" in table and "0.9500" in table
    assert "*" not in table and "do not compare" not in table
