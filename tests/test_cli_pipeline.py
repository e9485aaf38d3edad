"""The embedded commands, run as a user runs them, checked against the database rows."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select

from catdog.cli import main
from catdog.db.models import Prediction, ScanRun
from catdog.ops.output import COLUMNS


@pytest.fixture
def runner(env, sqlite_url) -> CliRunner:
    """A CLI runner on a fresh SQLite database."""
    env(database_url=sqlite_url)
    return CliRunner()


def test_classify_prints_one_jsonl_row_per_image(
    runner, photo_dir, tiny_model, sqlite_url, tmp_path, monkeypatch
):
    """Good images get a label and confidence; broken ones an error; rows land in SQLite."""
    result = runner.invoke(
        main, ["classify", str(photo_dir), "--model", str(tiny_model), "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == 8
    assert by_name["c0.jpg"]["label"] == "cat" and 0.5 < by_name["c0.jpg"]["confidence"] <= 1
    assert by_name["d1.png"]["label"] == "dog" and "error" not in by_name["d1.png"]
    assert (
        by_name["broken.jpg"]["label"] is None and "not an image" in by_name["broken.jpg"]["error"]
    )
    with create_engine(sqlite_url).connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction)) == 8


def test_classify_in_several_batches_labels_every_image_once_and_finishes_the_run(
    runner, env, photo_dir, tiny_model, sqlite_url
):
    """Batches overlap (the next decodes while one predicts); every image still lands once."""
    env(batch_size="3")  # 8 files: three batches, two of them in flight at a time
    result = runner.invoke(
        main, ["classify", str(photo_dir), "--model", str(tiny_model), "--format", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    labels = {Path(r["path"]).name: r["label"] for r in rows}
    assert len(rows) == 8
    assert [labels[f"c{i}.jpg"] for i in range(3)] == ["cat"] * 3
    assert [labels[f"d{i}.png"] for i in range(3)] == ["dog"] * 3
    with create_engine(sqlite_url).connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Prediction)) == 8
        run = conn.execute(select(ScanRun)).one()
    assert (run.total, run.done, run.failed) == (8, 6, 2) and run.finished is not None


def test_classify_csv_and_export_share_columns(runner, photo_dir, tiny_model):
    """export writes the same columns and rows as classify printed."""
    first = runner.invoke(
        main, ["classify", str(photo_dir), "--model", str(tiny_model), "--format", "csv"]
    )
    exported = runner.invoke(main, ["export", "--format", "csv"])
    assert first.exit_code == 0 and exported.exit_code == 0
    a = list(csv.DictReader(io.StringIO(first.stdout)))
    b = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert list(a[0]) == ["path", "label", "confidence", "error", "model_version", "source"]
    assert sorted(map(str, a)) == sorted(map(str, b))


def test_export_prints_the_same_rows_in_every_format(runner, photo_dir, tiny_model):
    """The shared --format: csv, jsonl and json carry the same rows; table shows them all."""
    classified = runner.invoke(main, ["classify", str(photo_dir), "--model", str(tiny_model)])
    assert classified.exit_code == 0, classified.output
    as_csv = list(csv.DictReader(io.StringIO(runner.invoke(main, ["export"]).stdout)))
    as_jsonl = [
        json.loads(x)
        for x in runner.invoke(main, ["export", "--format", "jsonl"]).stdout.splitlines()
    ]
    as_json = json.loads(runner.invoke(main, ["export", "--format", "json"]).stdout)
    assert as_json == as_jsonl and len(as_json) == len(as_csv) == 8
    assert {r["path"] for r in as_csv} == {r["path"] for r in as_json}
    table = runner.invoke(main, ["export", "--format", "table"]).stdout
    assert all(Path(r["path"]).name in table for r in as_json)


def test_export_details_add_probabilities_and_what_was_read(runner, photo_dir, tiny_model):
    """--details adds every class's probability, pixel size, file hash and labeling time."""
    import hashlib

    assert (
        runner.invoke(main, ["classify", str(photo_dir), "--model", str(tiny_model)]).exit_code == 0
    )
    lines = runner.invoke(main, ["export", "--format", "jsonl", "--details"]).stdout.splitlines()
    rows = {Path(r["path"]).name: r for r in map(json.loads, lines)}
    cat = rows["c0.jpg"]
    assert set(cat["probabilities"]) == {"cat", "dog"}
    assert abs(sum(cat["probabilities"].values()) - 1) < 1e-3
    assert cat["probabilities"]["cat"] == pytest.approx(cat["confidence"], abs=1e-4)
    assert (cat["width"], cat["height"]) == (48, 40)
    assert cat["sha256"] == hashlib.sha256((photo_dir / "cats/c0.jpg").read_bytes()).hexdigest()
    assert cat["labeled_at"].startswith("20")
    broken = rows["broken.jpg"]
    assert broken["sha256"] is None and broken["probabilities"] is None and broken["error"]
    table = runner.invoke(main, ["export", "--format", "csv", "--details"]).stdout
    csv_rows = {Path(r["path"]).name: r for r in csv.DictReader(io.StringIO(table))}
    assert json.loads(csv_rows["c0.jpg"]["probabilities"]) == cat["probabilities"]
    assert csv_rows["broken.jpg"]["width"] == ""


def test_status_prints_run_rows_in_the_shared_formats(runner, photo_dir, tiny_model):
    """status --format jsonl: one object per run with its counts, as the database has them."""
    assert (
        runner.invoke(main, ["classify", str(photo_dir), "--model", str(tiny_model)]).exit_code == 0
    )
    result = runner.invoke(main, ["status", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    (run,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert (run["state"], run["done"], run["failed"], run["pending"]) == ("finished", 6, 2, 0)
    one = runner.invoke(main, ["status", str(run["run"]), "--format", "csv"]).stdout
    assert next(csv.DictReader(io.StringIO(one)))["done"] == "6"


def test_classify_on_a_missing_path_says_so(runner, tmp_path):
    """A path that does not exist is a usage error naming it, exit code 2."""
    result = runner.invoke(main, ["classify", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert str(tmp_path / "nope") in result.stderr


def test_classify_on_an_empty_folder_says_so(runner, tmp_path, tiny_model):
    """A folder with no images is reported, not silently accepted."""
    (tmp_path / "empty").mkdir()
    result = runner.invoke(main, ["classify", str(tmp_path / "empty"), "--model", str(tiny_model)])
    assert result.exit_code == 1 and "no images found" in result.stderr


def test_classify_without_any_model_explains_how_to_get_one(
    runner, photo_dir, monkeypatch, tmp_path
):
    """With no bundled model and none registered, the message names the way out (a runtime
    failure: exit code 1)."""
    monkeypatch.setattr("catdog.db.registry.BUNDLED_MODEL", tmp_path / "absent.keras")
    result = runner.invoke(main, ["classify", str(photo_dir)])
    assert result.exit_code == 1 and "catdog train" in result.stderr


def test_scan_without_a_broker_points_to_classify(runner, photo_dir):
    """scan needs a broker; the error says what to do instead (a runtime failure: exit 1)."""
    result = runner.invoke(main, ["scan", str(photo_dir)])
    assert result.exit_code == 1 and "catdog classify" in result.stderr


def test_the_installed_command_runs_classify_end_to_end(photo_dir, tiny_model, tmp_path):
    """The console script, in a fresh process, classifies on LiteRT and exits 0, without
    TensorFlow's import notices or the XNNPACK delegate announcement on its stderr."""
    from catdog.training.tflite import export_tflite

    model = tmp_path / "model" / "tiny.keras"
    model.parent.mkdir()
    shutil.copy(tiny_model, model)
    shutil.copy(tiny_model.with_suffix(".json"), model.with_suffix(".json"))
    export_tflite(model)
    env = {**os.environ, "CATDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "catdog",
            "classify",
            str(photo_dir / "cats"),
            "--model",
            str(model),
            "--format",
            "jsonl",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert [json.loads(x)["label"] for x in out.stdout.splitlines()] == ["cat"] * 3
    for notice in ("oneDNN", "absl::InitializeLog", "XNNPACK delegate", "Saved artifact"):
        assert notice not in out.stderr, out.stderr
    assert "on TensorFlow" not in out.stderr  # the .tflite beside the model ran, on LiteRT


def test_classify_csv_on_stdout_is_only_rows_and_the_summary_goes_to_stderr(
    runner, photo_dir, tiny_model
):
    """stdout parses as CSV with the header first; the counts of the run are one stderr line."""
    result = runner.invoke(
        main, ["classify", str(photo_dir), "--model", str(tiny_model), "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == ",".join(COLUMNS)
    assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == 8
    (summary,) = [line for line in result.stderr.splitlines() if "labeled" in line]
    assert summary.startswith("6 labeled, 2 failed, 0 already labeled, 1 not registered")
    assert "(not an image type: 1)" in summary and summary.endswith(
        " s (catdog -v classify lists them)"
    )
    again = runner.invoke(main, ["classify", str(photo_dir), "--model", str(tiny_model)])
    assert "0 labeled, 0 failed, 8 already labeled" in again.stderr


def _run_on_a_terminal(argv: list[str], stdout: Path, env: dict[str, str]) -> str:
    """Run ``argv`` with stderr on a pseudo-terminal and stdout to a file; what the terminal
    showed."""
    import pty
    import threading

    master, slave = pty.openpty()
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with stdout.open("wb") as out:
        subprocess.run(argv, stdout=out, stderr=slave, env=env, timeout=180, check=True)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return shown.decode("utf-8", "replace")


def test_classify_typed_in_a_terminal_with_stdout_to_a_file_writes_only_csv_there(
    photo_dir, tiny_model, tmp_path
):
    """``catdog classify DIR --format csv > out.csv`` in a terminal: the bar, what is
    happening and the summary show on the terminal; the file starts with the CSV header."""
    env = {
        **os.environ,
        "CATDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'tty.db'}",
        "TERM": "xterm-256color",
        "COLUMNS": "120",
    }
    out = tmp_path / "out.csv"
    argv = [sys.executable, "-m", "catdog", "classify", str(photo_dir)]
    terminal = _run_on_a_terminal([*argv, "--model", str(tiny_model), "--format", "csv"], out, env)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(COLUMNS), text[:200]
    assert len(list(csv.DictReader(io.StringIO(text)))) == 8
    assert "loading model" in terminal and "6 labeled, 2 failed" in terminal, terminal[-2000:]


def test_verbose_classify_lists_each_file_not_registered_with_its_reason(
    photo_dir, tiny_model, tmp_path
):
    """``catdog -v classify`` names every file it did not register and why, on stderr."""
    (photo_dir / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    env = {**os.environ, "CATDOG_DATABASE_URL": f"sqlite:///{tmp_path / 'v.db'}"}
    argv = [sys.executable, "-m", "catdog", "-v", "classify", str(photo_dir)]
    out = subprocess.run(
        [*argv, "--model", str(tiny_model), "--format", "jsonl"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=True,
    )
    assert len(out.stdout.splitlines()) == 8
    assert "notes.txt (not an image type)" in out.stderr
    assert "gone.jpg (dangling link)" in out.stderr
    assert "2 not registered (" in out.stderr


def test_the_help_of_classify_and_scan_says_how_to_list_skipped_files(runner):
    """--help tells where skipped files are counted and that -v lists them."""
    for command in ("classify", "scan"):
        result = runner.invoke(main, [command, "--help"])
        assert f"`catdog -v {command}` lists" in " ".join(result.stdout.split()), result.stdout


def test_scan_counts_files_not_registered_on_stderr(
    env, sqlite_url, redis_url, photo_dir, tiny_model
):
    """scan prints its run line on stdout and the files it did not register, by reason, on
    stderr."""
    env(database_url=sqlite_url, broker_url=redis_url, model=str(tiny_model))
    result = CliRunner().invoke(main, ["scan", str(photo_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("run ") and "8 files" in result.stdout
    assert "1 not registered (not an image type: 1)" in result.stderr
