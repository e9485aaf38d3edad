"""Human review: images sent to reviewers, and the labels people gave them.

``review_items`` holds one row per image sent for review (Label Studio or a task file):
why it was chosen ('doubtful' or 'audit'), what the model said at that time, where it went
and what became of it. ``human_labels`` holds one row per reviewed image: the label, or NULL
with an ``outcome`` of 'skipped' or 'ambiguous' (kept out of training), who gave it and when.
A model never writes either table, so a relabel cannot overwrite a person's answer.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ts = sa.DateTime(timezone=True)


def _image_id() -> sa.Column[int]:
    """The reviewed image: one row per image, gone with it."""
    return sa.Column(
        "image_id", _id, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False, unique=True
    )


def upgrade() -> None:
    op.create_table(
        "review_items",
        sa.Column("id", _id, primary_key=True),
        _image_id(),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("predicted_label", sa.String(128)),
        sa.Column("confidence", sa.Float()),
        sa.Column("model_version", sa.String(64)),
        sa.Column("sha256", sa.String(64)),
        sa.Column("destination", sa.String(32), nullable=False),
        sa.Column("project", sa.String(1024)),
        sa.Column("task_id", sa.BigInteger()),
        sa.Column("pushed", _ts, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_table(
        "human_labels",
        sa.Column("id", _id, primary_key=True),
        _image_id(),
        sa.Column("label", sa.String(128)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("annotator", sa.String(255)),
        sa.Column("annotated", _ts),
        sa.Column("task_id", sa.BigInteger()),
        sa.Column("annotation_id", sa.BigInteger()),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("updated", _ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("human_labels")
    op.drop_table("review_items")
