"""Result rows as users see them: the same columns for ``classify`` and ``export``."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from catdog.db.models import Image, ModelVersion, Prediction
from catdog.db.queries import IN_CHUNK, latest_predictions

#: Column order of every table, CSV and JSONL output.
COLUMNS = ("path", "label", "confidence", "error", "model_version")
#: Further columns of ``export --details``: what the worker read, and when.
DETAIL_COLUMNS = ("probabilities", "width", "height", "sha256", "labeled_at")


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


def _row(image: Image, pred: Prediction, version: str) -> Row:
    conf = None if pred.confidence is None else round(pred.confidence, 4)
    return Row(
        str(Path(image.store) / image.path),
        pred.label,
        conf,
        pred.error,
        version,
        pred.probabilities,
        pred.width,
        pred.height,
        pred.sha256,
        pred.created.isoformat() if pred.created else None,
    )


def _cell(value: object) -> object:
    """A CSV cell: empty for None, JSON for a mapping."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def all_rows(session: Session) -> Iterable[Row]:
    """Latest result of every image in the database."""
    for image, pred, version in session.execute(latest_predictions(session)):
        yield _row(image, pred, version)


def rows_for(session: Session, image_ids: list[int], model_version_id: int) -> list[Row]:
    """Results of ``image_ids`` by one model version, in path order."""
    rows: list[Row] = []
    for start in range(0, len(image_ids), IN_CHUNK):
        chunk = image_ids[start : start + IN_CHUNK]
        stmt = (
            select(Image, Prediction, ModelVersion.version)
            .join(Prediction, Prediction.image_id == Image.id)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .where(Image.id.in_(chunk), Prediction.model_version_id == model_version_id)
        )
        rows.extend(_row(*r) for r in session.execute(stmt))
    return sorted(rows, key=lambda r: r.path)


def write_rows(
    rows: Iterable[Row], fmt: str, out: IO[str] | None = None, details: bool = False
) -> int:
    """Write rows as table, csv or jsonl; return how many. ``details`` adds DETAIL_COLUMNS
    (csv and jsonl)."""
    out = out or sys.stdout
    columns = COLUMNS + DETAIL_COLUMNS if details else COLUMNS
    n = 0
    if fmt == "jsonl":
        for r in rows:
            d = {c: getattr(r, c) for c in columns}
            if d["error"] is None:
                del d["error"]
            out.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    elif fmt == "csv":
        w = csv.writer(out)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(getattr(r, c)) for c in columns])
            n += 1
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(*COLUMNS)
        for r in rows:
            conf = "" if r.confidence is None else f"{r.confidence:.3f}"
            table.add_row(
                r.path, r.label or "[red]failed[/red]", conf, r.error or "", r.model_version
            )
            n += 1
        Console(file=out, width=200 if not out.isatty() else None).print(table)
    return n
