"""Runs know their producer and end; each image counts once per run.

``scan_runs`` gains ``producer`` (host:pid), ``heartbeat``, ``ended`` and ``end_reason``:
a run whose producer was interrupted or died is marked ended instead of showing
"scanning" forever, and its unqueued images wait for the next scan.

``run_results`` holds one row per (run, image) counted. Counting by "the prediction row
changed hands" counted a batch twice when overlapping runs or a relabel took the row over
between a batch and its redelivery; the counters now move only for a new (run, image).
Existing predictions with a run are copied in, so batches of runs in flight across the
upgrade are not counted again.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("scan_runs", sa.Column("producer", sa.String(255)))
    op.add_column("scan_runs", sa.Column("heartbeat", sa.DateTime(timezone=True)))
    op.add_column("scan_runs", sa.Column("ended", sa.DateTime(timezone=True)))
    op.add_column("scan_runs", sa.Column("end_reason", sa.Text()))
    op.create_table(
        "run_results",
        sa.Column("run_id", sa.Integer(), primary_key=True),
        sa.Column(
            "image_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
        ),
    )
    op.execute(
        "INSERT INTO run_results (run_id, image_id) "
        "SELECT DISTINCT run_id, image_id FROM predictions WHERE run_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("run_results")
    # In place (SQLite 3.35+), never batch mode: see 0003.
    for column in ("end_reason", "ended", "heartbeat", "producer"):
        op.execute(f"ALTER TABLE scan_runs DROP COLUMN {column}")
