"""The confidence threshold is applied when rows are written, never stored: the same command
on the same data gives the same answer, whatever ran before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from catdog.cli import main
from catdog.db.engine import engine_for, session_factory
from catdog.db.models import Prediction
from catdog.ops.output import UNCERTAIN, shown_label
from catdog.ops.report import summarize

#: Above some of the tiny model's confidences on the photo fixture, below others.
THRESHOLD = 0.99


@pytest.fixture
def runner(env, sqlite_url) -> CliRunner:
    """A CLI runner on a fresh SQLite database."""
    env(database_url=sqlite_url)
    return CliRunner()


def _classify(runner: CliRunner, photo_dir: Path, model: Path, *extra: str) -> dict[str, dict]:
    result = runner.invoke(
        main, ["classify", str(photo_dir), "--model", str(model), "--format", "jsonl", *extra]
    )
    assert result.exit_code == 0, result.output
    return {Path(r["path"]).name: r for r in map(json.loads, result.stdout.splitlines())}


def _labeled(rows: dict[str, dict]) -> dict[str, dict]:
    return {name: r for name, r in rows.items() if "error" not in r}


def test_a_threshold_on_an_already_labeled_folder_changes_the_output_not_the_data(
    runner, photo_dir, tiny_model, sqlite_url
):
    """Label, then --threshold 0.99 gives 'uncertain' below it, then no threshold gives the
    model's labels again: the database keeps the model's answer throughout."""
    first = _labeled(_classify(runner, photo_dir, tiny_model))
    assert {r["label"] for r in first.values()} == {"cat", "dog"}
    strict = _labeled(_classify(runner, photo_dir, tiny_model, "--threshold", str(THRESHOLD)))
    below = {n for n, r in first.items() if r["confidence"] < THRESHOLD}
    assert below, "the fixture needs confidences under the threshold"
    assert {n for n, r in strict.items() if r["label"] == UNCERTAIN} == below
    assert all(strict[n]["label"] == first[n]["label"] for n in first.keys() - below)
    assert all(strict[n]["confidence"] == first[n]["confidence"] for n in first)
    again = _labeled(_classify(runner, photo_dir, tiny_model))
    assert {n: r["label"] for n, r in again.items()} == {n: r["label"] for n, r in first.items()}
    with create_engine(sqlite_url).connect() as conn:
        stored = set(conn.scalars(select(Prediction.label).where(Prediction.error.is_(None))))
    assert stored == {"cat", "dog"}


def test_export_applies_the_option_or_the_setting_and_nothing_else(
    runner, env, photo_dir, tiny_model
):
    """export: no threshold shows the model's labels; --threshold and
    CATDOG_CONFIDENCE_THRESHOLD show 'uncertain' below it, the option winning."""
    _classify(runner, photo_dir, tiny_model)

    def export(*args: str) -> dict[str, str]:
        result = runner.invoke(main, ["export", "--format", "jsonl", *args])
        assert result.exit_code == 0, result.output
        return {
            Path(r["path"]).name: r["label"]
            for r in map(json.loads, result.stdout.splitlines())
            if "error" not in r
        }

    plain = export()
    assert set(plain.values()) == {"cat", "dog"}
    assert set(export("--threshold", "1").values()) == {UNCERTAIN}
    env(confidence_threshold="1")
    assert set(export().values()) == {UNCERTAIN}
    assert export("--threshold", "0") == plain


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "half"])
def test_a_threshold_outside_zero_to_one_is_a_usage_error(runner, photo_dir, value):
    """--threshold 1.5 is refused before anything runs (exit 2, naming the range)."""
    for command in (["classify", str(photo_dir)], ["export"], ["report", "--out", "x"]):
        result = runner.invoke(main, [*command, "--threshold", value])
        assert result.exit_code == 2, (command, result.output)
        assert "--threshold" in result.stderr


def test_a_setting_outside_zero_to_one_names_the_variable(runner, env):
    """CATDOG_CONFIDENCE_THRESHOLD=1.5 fails every command with one line naming it."""
    env(confidence_threshold="1.5")
    result = runner.invoke(main, ["export"])
    assert result.exit_code == 1 and "CATDOG_CONFIDENCE_THRESHOLD" in result.stderr


def test_the_report_counts_labels_below_the_threshold_as_uncertain(
    runner, photo_dir, tiny_model, sqlite_url
):
    """The report's counts and histogram follow the threshold asked for, not a stored one."""
    rows = _labeled(_classify(runner, photo_dir, tiny_model))
    below = sum(r["confidence"] < THRESHOLD for r in rows.values())
    with session_factory(engine_for(sqlite_url))() as session:
        plain = summarize(session)
        strict = summarize(session, threshold=THRESHOLD)
    assert set(plain.per_label) == {"cat", "dog"} and plain.labeled == strict.labeled == 6
    assert strict.per_label[UNCERTAIN] == below == sum(strict.histogram[UNCERTAIN])
    assert sum(strict.per_label.values()) == sum(plain.per_label.values())
    assert {d.label for d in strict.doubtful} >= {UNCERTAIN}


def test_only_a_successful_label_under_the_threshold_becomes_uncertain() -> None:
    """A failure stays without a label; at the threshold the label stands; none: unchanged."""
    assert shown_label("cat", 0.5, 0.6) == UNCERTAIN
    assert shown_label("cat", 0.6, 0.6) == "cat"
    assert shown_label(None, None, 0.6) is None
    assert shown_label("cat", 0.1, None) == "cat"
