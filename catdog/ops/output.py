"""Rows as users see them: one table of output formats, and the result columns that
``classify`` and ``export`` share.

Adding an output format is one writer function and one entry in ``WRITERS``; every command
that prints rows offers it through ``--format`` (``catdog.cli.options.output_options``). The
CSV, JSON Lines and JSON writers are a few lines of the standard library on purpose: they
stream millions of rows without holding them (only the table, a view for people, collects).

Text from the archive is data: file and class names are never read as Rich markup in the
table, and a CSV cell a spreadsheet would run as a formula gets a leading ``'``
(``FORMULA_START``). The threshold is applied here, when rows are written, not when images
are labeled: the database keeps the model's own label and confidence.

The database is imported inside the functions that read it, so the command line can read
``FORMATS`` without loading SQLAlchemy.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from catdog.db.models import Image, Prediction

#: A writer prints records (mappings of column to value; a missing key is an empty cell)
#: under ``columns`` to ``out`` and returns how many it wrote.
Writer = Callable[[Iterable[Mapping[str, object]], Sequence[str], IO[str]], int]

#: Column order of every table, CSV and JSONL output of results. ``source`` says who gave
#: the label: ``human`` (a reviewer's label, which wins over the model's) or the model version.
COLUMNS = ("path", "label", "confidence", "error", "model_version", "source")
#: ``source`` of a reviewer's label.
HUMAN = "human"
#: Further columns of ``export --details``: what the worker read, and when.
DETAIL_COLUMNS = ("probabilities", "width", "height", "sha256", "labeled_at")
#: First characters that make a spreadsheet (Excel, LibreOffice, Sheets) read a CSV cell as a
#: formula; such cells get a leading ``'`` (OWASP's advice on CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Characters a terminal acts on instead of showing (C0, DEL and C1 controls).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Label shown for a result whose confidence is below the threshold asked for.
UNCERTAIN = "uncertain"
#: Rows fetched per database round trip while streaming an export (a server-side cursor on
#: PostgreSQL): memory stays flat whatever the number of results.
STREAM_CHUNK = 2000
#: Columns of ``catdog status`` in csv and JSON (the table is ``catdog.ops.status``'s view).
RUN_COLUMNS = ("run", "root", "state", "done", "failed", "pending", "skipped", "rate", "eta_s")


@dataclass(frozen=True, slots=True)
class Row:
    """One image's latest result."""

    path: str
    label: str | None
    confidence: float | None
    error: str | None
    model_version: str
    probabilities: dict[str, float] | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    labeled_at: str | None = None
    #: ``human`` when a reviewer's label replaced the model's, else the model version.
    source: str | None = None


def shown_label(label: str | None, confidence: float | None, threshold: float | None) -> str | None:
    """The label to print: ``UNCERTAIN`` when ``confidence`` is below ``threshold``."""
    below = threshold is not None and confidence is not None and confidence < threshold
    return UNCERTAIN if below and label is not None else label


def _location(store: str, path: str) -> str:
    # Text, not Path: a store URL (s3://bucket) must keep its double slash.
    return f"{store.rstrip('/')}/{path}"


def _row(
    image: Image,
    pred: Prediction,
    version: str,
    human: str | None = None,
    threshold: float | None = None,
) -> Row:
    conf = None if pred.confidence is None or human is not None else round(pred.confidence, 4)
    return Row(
        _location(image.store, image.path),
        human if human is not None else shown_label(pred.label, pred.confidence, threshold),
        conf,
        None if human is not None else pred.error,
        version,
        pred.probabilities,
        pred.width,
        pred.height,
        pred.sha256,
        pred.created.isoformat() if pred.created else None,
        HUMAN if human is not None else version,
    )


def _cell(value: object) -> object:
    """A CSV cell: empty for None, JSON for a mapping, text that could be a formula quoted."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


# The writers are a few lines each over the csv and json modules: a library would add a
# dependency without removing the formula and markup rules that are catdog's own.
def write_csv(records: Iterable[Mapping[str, object]], columns: Sequence[str], out: IO[str]) -> int:
    """A header line, then one line per record; mappings as JSON text, formulas neutralised."""
    w = csv.writer(out)
    w.writerow(columns)
    n = 0
    for rec in records:
        w.writerow([_cell(rec.get(c)) for c in columns])
        n += 1
    return n


def write_jsonl(
    records: Iterable[Mapping[str, object]], columns: Sequence[str], out: IO[str]
) -> int:
    """One JSON object per line, with the record's keys among ``columns``."""
    n = 0
    for rec in records:
        out.write(json.dumps({c: rec[c] for c in columns if c in rec}, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_json(
    records: Iterable[Mapping[str, object]], columns: Sequence[str], out: IO[str]
) -> int:
    """One JSON array of objects, written an object at a time."""
    n = 0
    out.write("[")
    for rec in records:
        item = json.dumps({c: rec[c] for c in columns if c in rec}, ensure_ascii=False, indent=2)
        out.write(("," if n else "") + "\n  " + item.replace("\n", "\n  "))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def visible(text: str) -> str:
    """``text`` with control characters as ``\\xNN``: a file name holding an escape
    sequence must not recolour, retitle or clear the terminal it is shown in."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return visible(str(value))


def write_table(
    records: Iterable[Mapping[str, object]], columns: Sequence[str], out: IO[str]
) -> int:
    """An aligned table for people; a record with an ``error`` shows in red."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns)
    n = 0
    for rec in records:
        # Text, not markup: a file named "[red]x.jpg" is shown as it is.
        table.add_row(
            *(Text(_text(rec.get(c))) for c in columns), style="red" if rec.get("error") else None
        )
        n += 1
    Console(file=out, width=None if out.isatty() else 200).print(table)
    return n


#: Every output format, by the name ``--format`` takes; the first is the default for people.
WRITERS: dict[str, Writer] = {
    "table": write_table,
    "csv": write_csv,
    "jsonl": write_jsonl,
    "json": write_json,
}
#: The ``--format`` vocabulary.
FORMATS = tuple(WRITERS)


def write_records(
    records: Iterable[Mapping[str, object]],
    columns: Sequence[str],
    fmt: str,
    out: IO[str] | None = None,
) -> int:
    """Write ``records`` in format ``fmt`` (a name in ``WRITERS``); return how many."""
    try:
        writer = WRITERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}") from None
    return writer(records, columns, out or sys.stdout)


def all_rows(session: Session, threshold: float | None = None) -> Iterator[Row]:
    """Latest result of every image in the database, streamed ``STREAM_CHUNK`` rows at a time.

    A reviewer's label wins over the model's: such a row has the human label, no confidence
    (the model's was for its own label), no error, and ``source`` ``human``.
    """
    from catdog.db.models import Image, ModelVersion, Prediction
    from catdog.db.queries import latest_predictions
    from catdog.db.reviews import join_human_labels

    # Plain columns rather than ORM objects (several times faster per row), fetched in
    # chunks: yield_per streams, with a server-side cursor on PostgreSQL.
    stmt = join_human_labels(
        latest_predictions(session).with_only_columns(
            Image.store,
            Image.path,
            Prediction.label,
            Prediction.confidence,
            Prediction.error,
            ModelVersion.version,
            Prediction.probabilities,
            Prediction.width,
            Prediction.height,
            Prediction.sha256,
            Prediction.created,
        )
    ).execution_options(yield_per=STREAM_CHUNK)
    for row in session.execute(stmt):
        store, path, label, conf, error, version, probs, w, h, sha, created, human = row
        if human is not None:
            label, conf, error = human, None, None
        yield Row(
            _location(store, path),
            label if human is not None else shown_label(label, conf, threshold),
            None if conf is None else round(conf, 4),
            error,
            version,
            probs,
            w,
            h,
            sha,
            created.isoformat() if created else None,
            HUMAN if human is not None else version,
        )


def rows_for(
    session: Session, image_ids: list[int], model_version_id: int, threshold: float | None = None
) -> list[Row]:
    """Results of ``image_ids`` by one model version, in path order."""
    from sqlalchemy import select

    from catdog.db.models import Image, ModelVersion, Prediction
    from catdog.db.queries import IN_CHUNK
    from catdog.db.reviews import join_human_labels

    rows: list[Row] = []
    for start in range(0, len(image_ids), IN_CHUNK):
        chunk = image_ids[start : start + IN_CHUNK]
        stmt = join_human_labels(
            select(Image, Prediction, ModelVersion.version)
            .join(Prediction, Prediction.image_id == Image.id)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Image.id.in_(chunk), Prediction.model_version_id == model_version_id)
        )
        for image, pred, version, human in session.execute(stmt):
            rows.append(_row(image, pred, version, human, threshold))
    return sorted(rows, key=lambda r: r.path)


def record(row: Row, columns: Sequence[str]) -> dict[str, object]:
    """``row``'s values under ``columns``; ``error`` only when there is one."""
    rec = {c: getattr(row, c) for c in columns}
    if rec.get("error", "") is None:
        del rec["error"]
    return rec


def write_rows(
    rows: Iterable[Row], fmt: str, out: IO[str] | None = None, details: bool = False
) -> int:
    """Write result rows in format ``fmt``; return how many. ``details`` adds
    ``DETAIL_COLUMNS``."""
    columns = COLUMNS + DETAIL_COLUMNS if details else COLUMNS
    return write_records((record(r, columns) for r in rows), columns, fmt, out)
