"""The table of writers: every format prints the same records, and only those columns."""

from __future__ import annotations

import csv
import io
import json

import pytest

from catdog.ops.output import COLUMNS, FORMATS, WRITERS, Row, write_records, write_rows

ROWS = [
    Row("/p/a.jpg", "cat", 0.9876, None, "v1"),
    Row("/p/[red]b.png", None, None, "not an image", "v1"),
]


def _parse(fmt: str, text: str) -> list[dict[str, object]]:
    if fmt == "csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    return list(json.loads(text))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_machine_formats_carry_the_same_rows_and_columns(fmt: str) -> None:
    """csv, jsonl and json hold the shared columns; jsonl and json leave out a null error."""
    out = io.StringIO()
    assert write_rows(ROWS, fmt, out) == 2
    rows = _parse(fmt, out.getvalue())
    assert [r["path"] for r in rows] == ["/p/a.jpg", "/p/[red]b.png"]
    if fmt == "csv":
        assert list(rows[0]) == list(COLUMNS) and rows[0]["error"] == ""
    else:
        assert "error" not in rows[0] and rows[1]["error"] == "not an image"
        assert rows[0]["confidence"] == 0.9876 and rows[1]["label"] is None


def test_the_table_shows_names_as_they_are_not_as_markup() -> None:
    """A file name with square brackets is printed, not read as rich markup."""
    out = io.StringIO()
    write_rows(ROWS, "table", out)
    assert "[red]b.png" in out.getvalue() and "0.988" in out.getvalue()


def test_every_format_name_has_a_writer_and_unknown_ones_are_refused() -> None:
    """FORMATS is the writers' table; an unknown name lists the choices."""
    assert tuple(WRITERS) == FORMATS and {"table", "csv", "jsonl", "json"} <= set(FORMATS)
    with pytest.raises(ValueError, match="csv"):
        write_records([], COLUMNS, "xml", io.StringIO())


def test_a_new_writer_in_the_table_is_a_new_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a format is one entry: write_rows finds it by name."""

    def tsv(records, columns, out):  # type: ignore[no-untyped-def]
        n = 0
        for rec in records:
            out.write("\t".join(str(rec.get(c, "")) for c in columns) + "\n")
            n += 1
        return n

    monkeypatch.setitem(WRITERS, "tsv", tsv)
    out = io.StringIO()
    assert write_rows(ROWS[:1], "tsv", out) == 1
    assert out.getvalue().split("\t")[:2] == ["/p/a.jpg", "cat"]
