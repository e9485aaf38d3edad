"""The model registry: versioned ``.keras`` files plus a ``model_versions`` row each.

No TensorFlow here: workers ask the registry which version is production before they load
anything, and that question must stay cheap.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catdog.db.models import ModelVersion
from catdog.settings import BUNDLED_MODEL, Settings


class ModelNotFound(RuntimeError):
    """No usable model file: the message says how to get one."""


def metadata_path(model_file: Path) -> Path:
    """The JSON sidecar (classes, input size, metrics) of a ``.keras`` file."""
    return model_file.with_suffix(".json")


def tflite_path(model_file: Path) -> Path:
    """The LiteRT conversion CPU workers run, kept beside a ``.keras`` file."""
    return Path(model_file).with_suffix(".tflite")


def read_metadata(model_file: Path) -> dict[str, Any]:
    """Read a model's sidecar metadata; classes and input size are required."""
    side = metadata_path(model_file)
    if not side.is_file():
        raise ModelNotFound(f"{model_file}: metadata file {side.name} is missing next to it")
    meta: dict[str, Any] = json.loads(side.read_text())
    if not meta.get("classes") or not meta.get("input_size"):
        raise ModelNotFound(f"{side}: needs 'classes' and 'input_size'")
    return meta


def file_sha256(path: Path) -> str:
    """Content hash of a model file, so the same weights are one version everywhere."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_version(session: Session, model_file: Path, prefix: str = "file") -> ModelVersion:
    """The version row of a model file, created on first sight (keyed by content hash)."""
    model_file = model_file.resolve()
    if not model_file.is_file():
        raise ModelNotFound(f"model file not found: {model_file}")
    sha = file_sha256(model_file)
    row = session.scalars(select(ModelVersion).where(ModelVersion.sha256 == sha)).first()
    if row is not None:
        return row
    meta = read_metadata(model_file)
    row = ModelVersion(
        version=f"{prefix}-{sha[:12]}",
        file=str(model_file),
        sha256=sha,
        arch=str(meta.get("arch", "unknown")),
        classes=list(meta["classes"]),
        input_size=list(meta["input_size"]),
        metrics=dict(meta.get("metrics", {})),
        is_production=False,
    )
    try:
        with session.begin_nested():  # another process may register the same file now
            session.add(row)
    except IntegrityError:
        return session.scalars(select(ModelVersion).where(ModelVersion.sha256 == sha)).one()
    return row


def production(session: Session) -> ModelVersion | None:
    """The production version, if one was promoted."""
    return session.scalars(select(ModelVersion).where(ModelVersion.is_production)).first()


def current_version(session: Session, settings: Settings) -> ModelVersion:
    """The version that labels images now: ``CATDOG_MODEL``, else production, else bundled."""
    if settings.model is not None:
        return ensure_version(session, Path(settings.model))
    prod = production(session)
    if prod is not None:
        return prod
    if BUNDLED_MODEL.is_file():
        return ensure_version(session, BUNDLED_MODEL, prefix="bundled")
    raise ModelNotFound(
        "no model: this install has no bundled model and none is registered. Train one with "
        "`catdog train --data DIR --out models/mine` and pass `--model models/mine/model.keras` "
        "(or set CATDOG_MODEL), or promote one with `catdog models promote VERSION`."
    )


def register(session: Session, model_file: Path, models_dir: Path) -> ModelVersion:
    """Copy a trained model into the registry folder and record it (not yet production)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    sha = file_sha256(model_file)
    existing = session.scalars(select(ModelVersion).where(ModelVersion.sha256 == sha)).first()
    if existing is not None:
        return existing
    version = f"v{stamp}-{sha[:6]}"
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{version}.keras"
    shutil.copyfile(model_file, target)
    shutil.copyfile(metadata_path(model_file), metadata_path(target))
    if tflite_path(model_file).is_file():  # CPU workers run this, not the .keras file
        shutil.copyfile(tflite_path(model_file), tflite_path(target))
    row = ensure_version(session, target, prefix="v")
    row.version = version
    session.flush()
    return row


def promote(session: Session, version: str) -> ModelVersion:
    """Make ``version`` the production model; workers switch to it between batches."""
    row = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()
    if row is None:
        raise ModelNotFound(f"unknown model version {version!r} (see `catdog models list`)")
    session.execute(update(ModelVersion).values(is_production=False))
    row.is_production = True
    session.flush()
    return row
