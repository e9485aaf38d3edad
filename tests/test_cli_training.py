"""The training commands, run like a user runs them, on temporary files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from catdog.cli import main
from training_data import make_dataset

#: Shared fixtures: blob_data (generated images) and tiny_run (a model trained on them).
pytest_plugins = ["training_fixtures"]


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_train_writes_a_model_and_prints_its_validation_accuracy(
    blob_data: Path, tmp_path: Path
) -> None:
    """``catdog train --arch tiny`` leaves model.keras and report.html in --out."""
    result = invoke(
        "train",
        "--data",
        str(blob_data),
        "--arch",
        "tiny",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "model.keras").is_file()
    assert (tmp_path / "run" / "report.html").is_file()
    assert "validation: accuracy" in result.output


@pytest.mark.parametrize("command", ["train", "evaluate", "explore"])
def test_bad_data_folders_fail_with_a_clear_message(
    tmp_path: Path, command: str, tiny_run: Any
) -> None:
    """A missing folder is a usage error (exit 2), a one-class folder a runtime failure
    (exit 1); both say why, neither is a traceback."""
    one_class = make_dataset(tmp_path / "one", per_class=2, classes=("cat",))
    for data, reason, code in (
        (tmp_path / "missing", "does not exist", 2),
        (one_class, "one class", 1),
    ):
        args = {
            "train": ["train", "--data", str(data), "--arch", "tiny"],
            "evaluate": ["evaluate", "--data", str(data), "--model", str(tiny_run.model_file)],
            "explore": ["explore", str(data), "--out", str(tmp_path / "x")],
        }[command]
        result = invoke(*args)
        assert result.exit_code == code, result.output
        assert reason in result.output


def test_evaluate_prints_metrics_as_json_or_text(tiny_run: Any, blob_data: Path) -> None:
    """``--format json`` is machine-readable; the default is a readable table."""
    result = invoke(
        "evaluate",
        "--data",
        str(blob_data),
        "--model",
        str(tiny_run.model_file),
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["n"] == 48 and 0 <= metrics["roc_auc"] <= 1
    text = invoke("evaluate", "--data", str(blob_data), "--model", str(tiny_run.model_file))
    assert "accuracy" in text.output and "cat" in text.output


def test_explore_writes_the_report(tmp_path: Path, blob_data: Path) -> None:
    """``catdog explore DATA --out DIR`` prints where the report is."""
    result = invoke("explore", str(blob_data), "--out", str(tmp_path / "x"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "report.html").is_file()


def test_models_list_and_promote_use_the_registry(
    tiny_run: Any, tmp_path: Path, sqlite_url: str, env: Callable[..., None]
) -> None:
    """A .keras file can be promoted, then shows as production in the list."""
    env(database_url=sqlite_url, models_dir=str(tmp_path / "models"))
    assert invoke("db", "upgrade").exit_code == 0
    assert "no registered models" in invoke("models").output
    promoted = invoke("models", "promote", str(tiny_run.model_file))
    assert promoted.exit_code == 0, promoted.output
    version = promoted.output.split(":")[-1].strip()
    listed = json.loads(invoke("models", "list", "--format", "json").output)
    assert [(m["version"], m["arch"], m["production"]) for m in listed] == [(version, "tiny", True)]
    assert version in invoke("models", "list").output  # the table, for people
    unknown = invoke("models", "promote", "v-nope")
    assert unknown.exit_code != 0 and "unknown model version" in unknown.output


def test_retrain_without_a_broker_says_how_to_train_locally(env: Callable[..., None]) -> None:
    """Embedded mode has no training worker: retrain explains instead of hanging."""
    env()
    result = invoke("retrain", "--data", ".")
    assert result.exit_code != 0 and "catdog train" in result.output
