"""SQLAlchemy 2 table models (kept apart from message and report types)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the tables use."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of every catdog table."""

    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Image(Base):
    """One file in an image store, registered by the producer."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("store", "path", name="uq_images_store_path"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    #: The store root the path is relative to (an absolute local path for local stores).
    store: Mapped[str] = mapped_column(String(1024))
    path: Mapped[str] = mapped_column(String(4096))
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    #: The store's tag for this content (S3 ETag, GCS generation); NULL for local files,
    #: which are compared by size and mtime (migration 0006).
    version: Mapped[str | None] = mapped_column(String(255))
    registered: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """A model file known to the registry; at most one is production."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    file: Mapped[str] = mapped_column(String(4096))
    sha256: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(32), default="unknown")
    classes: Mapped[list[Any]] = mapped_column(default=list)
    input_size: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    is_production: Mapped[bool] = mapped_column(Boolean, default=False)


class Prediction(Base):
    """The label one model version gave one image, or why it could not."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id", name="uq_predictions_image_model"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    #: The scan run that produced this row (progress counters follow it). No foreign key or
    #: index: nothing queries by it, and both slow the bulk writes (migration 0002).
    run_id: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column()
    #: Human-readable reason when the image could not be classified; NULL on success.
    error: Mapped[str | None] = mapped_column(Text)
    #: What the worker read: the hash of the file's bytes and its pixel size (before resizing).
    #: Kept with the label rather than on the image row, so a result costs no image update
    #: (migration 0003).
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class ScanRun(Base):
    """One scan of a store root: what was queued and what came back."""

    __tablename__ = "scan_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    root: Mapped[str] = mapped_column(String(1024))
    relabel: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    started: Mapped[datetime] = mapped_column(default=utcnow)
    #: Set when the producer has queued everything.
    enqueued: Mapped[datetime | None] = mapped_column()
    #: Set when every queued image has a result.
    finished: Mapped[datetime | None] = mapped_column()
    files_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Who registers the run, ``host:pid``: a later scan or ``status`` on the same host can
    #: tell that the process is gone at once (migration 0004).
    producer: Mapped[str | None] = mapped_column(String(255))
    #: Refreshed by the producer while it registers and queues; a stale one means it is gone.
    heartbeat: Mapped[datetime | None] = mapped_column()
    #: Set when the producer stopped before queueing everything (a signal, an error, or found
    #: gone later); the run's unqueued images are left to the next scan of the root.
    ended: Mapped[datetime | None] = mapped_column()
    #: Why the run ended early, in a few words.
    end_reason: Mapped[str | None] = mapped_column(Text)


class RunResult(Base):
    """An image that has a result counted for a run: a run counts each image once.

    Redelivered batches, overlapping runs and relabels can write one image's prediction
    several times; its run's counters move only when this row is new (migration 0004).
    """

    __tablename__ = "run_results"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True
    )


class TrainingRun(Base):
    """One training job: its data, outcome and whether it was promoted."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[str] = mapped_column(String(4096))
    arch: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), default="running")
    started: Mapped[datetime] = mapped_column(default=utcnow)
    finished: Mapped[datetime | None] = mapped_column()
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    baseline_metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    message: Mapped[str | None] = mapped_column(Text)


def _reviewed_image() -> Mapped[int]:
    """The image a review row is about: one row per image, gone with it."""
    return mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("images.id", ondelete="CASCADE"),
        unique=True,
    )


class ReviewItem(Base):
    """An image sent to people for review, and what the model said when it was sent.

    One row per image: an image under review or reviewed is never sent again (migration 0005).
    """

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    image_id: Mapped[int] = _reviewed_image()
    #: 'doubtful' (low confidence) or 'audit' (a random confident label).
    reason: Mapped[str] = mapped_column(String(16))
    predicted_label: Mapped[str | None] = mapped_column(String(128))
    confidence: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str | None] = mapped_column(String(64))
    #: The hash of the bytes the model labeled (the prediction's), when known.
    sha256: Mapped[str | None] = mapped_column(String(64))
    #: 'label-studio' or 'file'.
    destination: Mapped[str] = mapped_column(String(32))
    #: The Label Studio project (its URL) or the task file written.
    project: Mapped[str | None] = mapped_column(String(1024))
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    pushed: Mapped[datetime] = mapped_column(default=utcnow)
    #: 'pending' until an answer comes back, then the human label's outcome.
    status: Mapped[str] = mapped_column(String(16), default="pending")


class HumanLabel(Base):
    """What a person said an image shows; a model never writes this table.

    ``label`` is NULL when the reviewer skipped the task or gave several answers
    (``outcome`` 'skipped' or 'ambiguous'): such images stay out of training.
    """

    __tablename__ = "human_labels"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    image_id: Mapped[int] = _reviewed_image()
    label: Mapped[str | None] = mapped_column(String(128))
    #: 'labeled', 'skipped' or 'ambiguous'.
    outcome: Mapped[str] = mapped_column(String(16))
    annotator: Mapped[str | None] = mapped_column(String(255))
    annotated: Mapped[datetime | None] = mapped_column()
    task_id: Mapped[int | None] = mapped_column(BigInteger)
    annotation_id: Mapped[int | None] = mapped_column(BigInteger)
    #: 'label-studio' (pulled through the API) or 'file' (an imported export file).
    source: Mapped[str] = mapped_column(String(32))
    updated: Mapped[datetime] = mapped_column(default=utcnow)
