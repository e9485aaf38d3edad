"""Initial schema: images, model versions, predictions, scan and training runs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", _id, primary_key=True),
        sa.Column("store", sa.String(1024), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime", sa.Float(), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("width", sa.Integer()),
        sa.Column("height", sa.Integer()),
        sa.Column("registered", _ts, nullable=False),
        sa.UniqueConstraint("store", "path", name="uq_images_store_path"),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False, unique=True),
        sa.Column("file", sa.String(4096), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("arch", sa.String(32), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("input_size", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created", _ts, nullable=False),
        sa.Column("is_production", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "scan_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("root", sa.String(1024), nullable=False),
        sa.Column("relabel", sa.Boolean(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), sa.ForeignKey("model_versions.id")),
        sa.Column("started", _ts, nullable=False),
        sa.Column("enqueued", _ts),
        sa.Column("finished", _ts),
        sa.Column("files_seen", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("id", _id, primary_key=True),
        sa.Column("image_id", _id, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "model_version_id", sa.Integer(), sa.ForeignKey("model_versions.id"), nullable=False
        ),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("scan_runs.id", ondelete="SET NULL")),
        sa.Column("label", sa.String(128)),
        sa.Column("confidence", sa.Float()),
        sa.Column("probabilities", sa.JSON()),
        sa.Column("error", sa.Text()),
        sa.Column("created", _ts, nullable=False),
        sa.UniqueConstraint("image_id", "model_version_id", name="uq_predictions_image_model"),
    )
    op.create_index("ix_predictions_run", "predictions", ["run_id"])
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("task_id", sa.String(64)),
        sa.Column("data", sa.String(4096), nullable=False),
        sa.Column("arch", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started", _ts, nullable=False),
        sa.Column("finished", _ts),
        sa.Column("model_version_id", sa.Integer(), sa.ForeignKey("model_versions.id")),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("baseline_metrics", sa.JSON(), nullable=False),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("message", sa.Text()),
    )


def downgrade() -> None:
    op.drop_table("training_runs")
    op.drop_index("ix_predictions_run", "predictions")
    op.drop_table("predictions")
    op.drop_table("scan_runs")
    op.drop_table("model_versions")
    op.drop_table("images")
