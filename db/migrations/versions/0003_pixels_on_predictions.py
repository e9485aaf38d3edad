"""What the worker read (sha256, width, height) moves from images to predictions.

Writing it onto ``images`` meant updating one images row per result. The rows grow from
NULL to a 64-character hash, so on PostgreSQL most of those updates could not stay on their
page: only 28% were HOT, the rest rewrote the (store, path) index, and that update took a
third of each batch write (20,000 -> 30,000 rows/s without it in bench/producer_db.py). It
also left a dead copy of every image row behind. As columns of the prediction they cost
almost nothing, are deleted with it when the file changes, and record which bytes a label
describes.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = ("sha256", "width", "height")


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("sha256", sa.String(64)),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
    ]


def _copy(target: str, source: str, join: str) -> None:
    """Copy the three columns from ``source`` rows to the ``target`` rows matched by ``join``.

    UPDATE ... FROM is understood by PostgreSQL and by SQLite 3.33+.
    """
    sets = ", ".join(f"{c} = s.{c}" for c in _COLUMNS)
    op.execute(f"UPDATE {target} SET {sets} FROM {source} s WHERE {join} AND s.sha256 IS NOT NULL")


def _drop(table: str) -> None:
    """Drop the three columns in place (SQLite 3.35+ can). Never batch mode here: it would
    rebuild ``images`` by DROP TABLE, and SQLite's ON DELETE CASCADE would empty predictions."""
    for c in _COLUMNS:
        op.execute(f"ALTER TABLE {table} DROP COLUMN {c}")


def upgrade() -> None:
    for column in _columns():
        op.add_column("predictions", column)
    _copy("predictions", "images", "s.id = predictions.image_id")
    _drop("images")
    if op.get_context().dialect.name == "postgresql":
        # Workers no longer update image rows: pack them densely again (new pages).
        op.execute("ALTER TABLE images RESET (fillfactor)")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE images SET (fillfactor = 70)")
    for column in _columns():
        op.add_column("images", column)
    _copy("images", "predictions", "s.image_id = images.id")
    _drop("predictions")
