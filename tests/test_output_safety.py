"""Text from the archive is data: names never act as Rich markup or spreadsheet formulas, and
names of any encoding are written by every output."""

from __future__ import annotations

import csv
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from catdog.cli import main
from catdog.db.models import ScanRun
from catdog.ops.output import FORMATS, FORMULA_START, Row, write_rows
from catdog.ops.status import status_table
from helpers import make_image

#: Names Rich would read as markup: styles, a bare closing tag (a MarkupError when parsed),
#: a link and an escape-looking sequence.
MARKUP_NAMES = ["[bold]x[/bold]", "[/]", "[link=https://example.com]y[/link]", "\\[red]z"]
#: Spreadsheet formulas, one per character that starts one.
FORMULAS = ["=1+1", "+1+1", "-1+1", "@SUM(1)", "\t=1", "\r=1"]


@pytest.fixture
def runner(env, sqlite_url) -> CliRunner:
    """A CLI runner on a fresh SQLite database."""
    env(database_url=sqlite_url)
    return CliRunner()


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _shown(fmt: str, text: str) -> str:
    """What a reader sees: the text, or for JSON formats the decoded paths."""
    if fmt == "jsonl":
        return "\n".join(json.loads(x)["path"] for x in text.splitlines())
    if fmt == "json":
        return "\n".join(r["path"] for r in json.loads(text))
    return text


@pytest.mark.parametrize("formula", FORMULAS)
def test_a_csv_cell_that_starts_a_formula_gets_a_leading_quote(formula: str) -> None:
    """Label, error and path cells that a spreadsheet would evaluate start with ' instead."""
    out = io.StringIO()
    write_rows([Row(formula, formula, 0.5, formula, formula)], "csv", out)
    (row,) = _csv_rows(out.getvalue())
    assert [row[c] for c in ("path", "label", "error", "model_version")] == ["'" + formula] * 4
    assert row["confidence"] == "0.5"


def test_csv_cells_that_start_otherwise_are_written_as_they_are() -> None:
    """Plain names, paths, numbers (negative ones too) and JSON cells are untouched."""
    out = io.StringIO()
    rows = [Row("/p/a=b.jpg", "cat", -0.5, "x = y", "v1", {"=x": 1.0})]
    write_rows(rows, "csv", out, details=True)
    (row,) = _csv_rows(out.getvalue())
    assert (row["path"], row["label"], row["confidence"], row["error"]) == (
        "/p/a=b.jpg",
        "cat",
        "-0.5",
        "x = y",
    )
    assert json.loads(row["probabilities"]) == {"=x": 1.0}


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_outputs_keep_formula_looking_text_exactly(fmt: str) -> None:
    """JSON is read by programs, not spreadsheets: its strings stay byte for byte."""
    out = io.StringIO()
    write_rows([Row("/p/x", FORMULAS[0], 0.5, FORMULAS[3], "v1")], fmt, out)
    text = out.getvalue()
    (row,) = [json.loads(x) for x in text.splitlines()] if fmt == "jsonl" else json.loads(text)
    assert (row["label"], row["error"]) == (FORMULAS[0], FORMULAS[3])
    assert set(FORMULA_START) == {"=", "+", "-", "@", "\t", "\r"}


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_every_format_writes_a_markup_name_as_it_is(name: str) -> None:
    """Every writer prints ``name`` literally; none raises on Rich markup."""
    for fmt in FORMATS:
        out = io.StringIO()
        assert write_rows([Row(f"/p/{name}.jpg", name, 0.5, None, "v1")], fmt, out) == 1
        assert f"{name}.jpg" in out.getvalue().replace("\\\\", "\\"), fmt


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_the_status_table_shows_a_root_with_markup_as_written(name: str) -> None:
    """A run whose root looks like markup is shown literally; ``[/]`` no longer breaks it."""
    now = datetime.now(UTC)
    run = ScanRun(id=1, root=f"/data/{name}", started=now, total=1, done=1, failed=0, skipped=0)
    out = io.StringIO()
    Console(file=out, width=200).print(status_table([run]))
    assert f"/data/{name}" in out.getvalue()


def test_classify_prints_markup_and_formula_class_names_safely(
    runner, tmp_path, tiny_model, photo_dir
):
    """A model whose classes are markup and a formula: the table shows them, CSV defuses one."""
    model = tmp_path / "odd" / "odd.keras"
    model.parent.mkdir()
    shutil.copy(tiny_model, model)
    meta = json.loads(tiny_model.with_suffix(".json").read_text())
    meta["classes"] = ["[bold]cat[/]", '=HYPERLINK("http://x","dog")']
    model.with_suffix(".json").write_text(json.dumps(meta))
    table = runner.invoke(main, ["classify", str(photo_dir / "cats"), "--model", str(model)])
    assert table.exit_code == 0, table.output
    assert "[bold]cat[/]" in table.stdout
    dogs = runner.invoke(
        main, ["classify", str(photo_dir / "dogs"), "--model", str(model), "--format", "csv"]
    )
    assert dogs.exit_code == 0, dogs.output
    assert {r["label"] for r in _csv_rows(dogs.stdout)} == {"'" + meta["classes"][1]}


def test_file_names_of_any_encoding_and_markup_reach_every_output(runner, tmp_path, tiny_model):
    """Latin-1 bytes, markup and a ``[/]`` across folders: classify, export (every format),
    status and the report all finish and show the names readably."""
    root = tmp_path / "odd"
    make_image(root / "[bold]x[/bold].jpg", "cat")
    make_image(root / "x[" / "]y.jpg", "dog")  # the stored path reads "x[/]y.jpg"
    latin1 = bytes(root) + b"/caf\xe9.jpg"
    make_image(Path(latin1.decode("utf-8", "surrogateescape")), "cat")
    make_image(root / "café.png", "dog")
    names = ["[bold]x[/bold].jpg", "x[/]y.jpg", "caf\\xe9.jpg", "café.png"]
    for fmt in FORMATS:
        result = runner.invoke(
            main, ["classify", str(root), "--model", str(tiny_model), "--format", fmt]
        )
        assert result.exit_code == 0, (fmt, result.output)
        assert all(n in _shown(fmt, result.stdout) for n in names), (fmt, result.stdout)
    for fmt in FORMATS:
        exported = runner.invoke(main, ["export", "--format", fmt])
        assert exported.exit_code == 0, exported.output
        assert all(n in _shown(fmt, exported.stdout) for n in names), fmt
    assert runner.invoke(main, ["status"]).exit_code == 0
    report = runner.invoke(main, ["report", "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output


def test_rows_reach_a_stdout_that_cannot_encode_the_names(runner, tmp_path, tiny_model):
    """An ASCII-only stdout gets ``\\xNN`` escapes for what it cannot hold, not a crash."""
    make_image(tmp_path / "store" / "café.png", "dog")
    ascii_runner = CliRunner(charset="ascii")
    assert (
        runner.invoke(
            main, ["classify", str(tmp_path / "store"), "--model", str(tiny_model)]
        ).exit_code
        == 0
    )
    for fmt in ("csv", "jsonl", "table"):
        result = ascii_runner.invoke(main, ["export", "--format", fmt])
        assert result.exit_code == 0, (fmt, result.output)
        assert "caf\\xe9.png" in result.stdout, fmt


def test_the_table_shows_control_characters_in_names_instead_of_obeying_them() -> None:
    """An escape sequence in a file name is printed as ``\\x1b``, never sent to the terminal."""
    out = io.StringIO()
    name = "/p/\x1b]0;owned\x07\x1b[2Jx.jpg"
    write_rows([Row(name, "cat", 0.5, None, "v1")], "table", out)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "\\x1b]0;owned\\x07\\x1b[2Jx.jpg" in out.getvalue()
