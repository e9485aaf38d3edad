"""Images keep the store's version tag of their content.

``images.version`` holds what an object store's listing says about an object's content: the
S3 ETag or the GCS generation. A scan compares it instead of the modification time, so an
object rewritten with new content is labeled again even when its size and time look the
same, and one copied unchanged is not. Local files have no tag (NULL) and are compared by
size and mtime as before. Rows registered before this revision get their tag on the next
scan, without being labeled again.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("version", sa.String(255)))


def downgrade() -> None:
    # In place (SQLite 3.35+), never batch mode: see 0003.
    op.execute("ALTER TABLE images DROP COLUMN version")
