"""The model registry as people read it: which version is production, and what each
version's accuracy was measured on.

Every version's accuracy comes from its own validation set, so two accuracies compare only
when those sets are the same: each row carries the set's size and data fingerprint, and the
table says when they differ. Before any promotion the bundled model is production (workers
load it), so it is listed and marked even if nothing has used it yet.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catdog.db.models import ModelVersion
from catdog.db.registry import file_sha256, metadata_path
from catdog.ops.output import write_records
from catdog.settings import BUNDLED_MODEL

#: Columns of ``catdog models list``.
MODEL_COLUMNS = (
    "production",
    "version",
    "arch",
    "accuracy",
    "validation_images",
    "validation_data",
    "created",
    "file",
)
#: The production cell of the bundled model while nothing has been promoted.
BUNDLED_DEFAULT = "yes (bundled default)"
#: Characters of a data fingerprint shown in the table (the JSON has it whole).
FINGERPRINT_CHARS = 12


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One registered (or bundled) model version as ``models list`` shows it."""

    production: bool
    version: str
    arch: str
    accuracy: float | None
    #: Images in the validation set the accuracy was measured on.
    validation_images: int | None
    #: Fingerprint of the labeled data that set was drawn from (same files, same print).
    validation_data: str | None
    created: str
    file: str
    #: True for the bundled model while no version has been promoted.
    bundled_default: bool = False
    #: False for the bundled model before any command has used it (no row in the registry).
    registered: bool = True


def _sidecar(model_file: Path) -> dict[str, Any]:
    """A model's metadata file, or nothing when it is gone (a copy made elsewhere)."""
    try:
        meta = json.loads(metadata_path(model_file).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _validation(metrics: Mapping[str, Any], model_file: Path) -> tuple[int | None, str | None]:
    """The validation set's size and data fingerprint: from the stored metrics, else from
    the model's metadata file (training writes the fingerprint beside the metrics)."""
    size, fingerprint = metrics.get("n"), metrics.get("data_fingerprint")
    if size is None or fingerprint is None:
        meta = _sidecar(model_file)
        size = size if size is not None else meta.get("metrics", {}).get("n")
        fingerprint = fingerprint or meta.get("data_fingerprint")
    return (int(size) if size is not None else None), (str(fingerprint) if fingerprint else None)


def _row(version: ModelVersion) -> ModelRow:
    size, fingerprint = _validation(version.metrics, Path(version.file))
    accuracy = version.metrics.get("accuracy")
    return ModelRow(
        production=version.is_production,
        version=version.version,
        arch=version.arch,
        accuracy=None if accuracy is None else float(accuracy),
        validation_images=size,
        validation_data=fingerprint,
        created=f"{version.created:%Y-%m-%d %H:%M}",
        file=version.file,
    )


def _bundled_row(sha: str) -> ModelRow:
    """The bundled model before anything registered it, named as the registry will name it."""
    meta = _sidecar(BUNDLED_MODEL)
    metrics = meta.get("metrics", {})
    size, fingerprint = _validation(metrics, BUNDLED_MODEL)
    created = datetime.fromtimestamp(BUNDLED_MODEL.stat().st_mtime, UTC)
    if isinstance(meta.get("created"), str):
        created = datetime.fromisoformat(meta["created"])
    return ModelRow(
        production=True,
        version=f"bundled-{sha[:12]}",
        arch=str(meta.get("arch", "unknown")),
        accuracy=metrics.get("accuracy"),
        validation_images=size,
        validation_data=fingerprint,
        created=f"{created:%Y-%m-%d %H:%M}",
        file=str(BUNDLED_MODEL.resolve()),
        bundled_default=True,
        registered=False,
    )


def model_rows(session: Session) -> list[ModelRow]:
    """Registered versions, oldest first; with no promoted version, the bundled model (the
    one workers load then) is marked production, and listed first if it is not registered."""
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created)).all()
    rows = [_row(v) for v in versions]
    if any(v.is_production for v in versions) or not BUNDLED_MODEL.is_file():
        return rows
    sha = file_sha256(BUNDLED_MODEL)
    for i, version in enumerate(versions):
        if version.sha256 == sha:
            rows[i] = ModelRow(**{**asdict(rows[i]), "production": True, "bundled_default": True})
            return rows
    return [_bundled_row(sha), *rows]


def differing_validation(rows: Sequence[ModelRow]) -> bool:
    """Whether the accuracies shown were measured on different validation sets."""
    sets = {(r.validation_images, r.validation_data) for r in rows if r.accuracy is not None}
    return len(sets) > 1


def footnote(rows: Sequence[ModelRow]) -> str:
    """Why the starred accuracies do not compare, and how to compare them."""
    sizes = sorted({r.validation_images for r in rows if r.validation_images is not None})
    shown = " and ".join(f"{n:,}" for n in sizes) or "unknown numbers of"
    return (
        f"* accuracies measured on different validation sets ({shown} images, see "
        "validation_data): they do not compare. To compare versions on one set: "
        "catdog evaluate --data DIR --model FILE"
    )


def _table_record(row: ModelRow, starred: bool) -> dict[str, object]:
    """A row for people: production spelled out, accuracy to 4 places, short fingerprint."""
    accuracy = "" if row.accuracy is None else f"{row.accuracy:.4f}" + (" *" if starred else "")
    return {
        **asdict(row),
        "production": BUNDLED_DEFAULT if row.bundled_default else ("yes" if row.production else ""),
        "accuracy": accuracy,
        "validation_images": "" if row.validation_images is None else f"{row.validation_images:,}",
        "validation_data": (row.validation_data or "")[:FINGERPRINT_CHARS],
    }


def write_model_rows(rows: Sequence[ModelRow], fmt: str, out: IO[str] | None = None) -> None:
    """Print ``rows`` in format ``fmt``: the table spells production out and notes differing
    validation sets under itself; csv and JSON carry the same facts as plain values."""
    if fmt != "table":
        columns = (*MODEL_COLUMNS, "bundled_default", "registered")
        write_records((asdict(r) for r in rows), columns, fmt, out)
        return
    starred = differing_validation(rows)
    write_records([_table_record(r, starred) for r in rows], MODEL_COLUMNS, fmt, out)
    if starred:
        print(footnote(rows), file=out or sys.stdout)
