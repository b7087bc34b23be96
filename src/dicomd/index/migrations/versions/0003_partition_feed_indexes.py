"""Indexes for replicas and partitions: a partition's change feed, and the orphan sweep's look-up of
queued deleted objects.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_changefeed_partition", "changefeed", ["partition_key", "sequence"])
    op.create_index(
        "ix_changefeed_partition_timestamp", "changefeed", ["partition_key", "timestamp", "sequence"]
    )
    op.create_index("ix_deleted_object_key", "deleted_object", ["object_key"])


def downgrade() -> None:
    op.drop_index("ix_deleted_object_key", "deleted_object")
    op.drop_index("ix_changefeed_partition_timestamp", "changefeed")
    op.drop_index("ix_changefeed_partition", "changefeed")
