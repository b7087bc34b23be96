"""Initial index schema: partition, study, series, instance, changefeed, deleted_object.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# frozen copy of the column types at this revision (schema.py may evolve; migrations must not)
Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    partition = op.create_table(
        "partition",
        sa.Column("partition_key", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("partition_name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "study",
        sa.Column("study_key", Key, primary_key=True, autoincrement=True),
        sa.Column("partition_key", sa.Integer, sa.ForeignKey("partition.partition_key"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String),
        sa.Column("patient_name", sa.String),
        sa.Column("patient_name_norm", sa.String),
        sa.Column("patient_name_words", sa.String),
        sa.Column("patient_birth_date", sa.String),
        sa.Column("patient_sex", sa.String),
        sa.Column("accession_number", sa.String),
        sa.Column("referring_physician_name", sa.String),
        sa.Column("referring_physician_name_norm", sa.String),
        sa.Column("referring_physician_name_words", sa.String),
        sa.Column("study_date", sa.String),
        sa.Column("study_time", sa.String),
        sa.Column("study_id", sa.String),
        sa.Column("study_description", sa.String),
        sa.Column("num_series", sa.Integer, nullable=False, server_default="0"),
        sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("partition_key", "study_instance_uid", name="uq_study_uid"),
    )
    op.create_index("ix_study_patient_id", "study", ["partition_key", "patient_id"])
    op.create_index("ix_study_study_date", "study", ["partition_key", "study_date"])
    op.create_index("ix_study_accession_number", "study", ["partition_key", "accession_number"])
    op.create_index("ix_study_patient_birth_date", "study", ["partition_key", "patient_birth_date"])

    op.create_table(
        "series",
        sa.Column("series_key", Key, primary_key=True, autoincrement=True),
        sa.Column("study_key", Key, sa.ForeignKey("study.study_key"), nullable=False),
        sa.Column("partition_key", sa.Integer, nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.String),
        sa.Column("performed_procedure_step_start_date", sa.String),
        sa.Column("performed_procedure_step_start_time", sa.String),
        sa.Column("body_part_examined", sa.String),
        sa.Column("manufacturer_model_name", sa.String),
        sa.Column("num_instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("partition_key", "study_key", "series_instance_uid", name="uq_series_uid"),
    )
    op.create_index("ix_series_study_modality", "series", ["study_key", "modality"])
    op.create_index("ix_series_modality", "series", ["partition_key", "modality"])
    op.create_index("ix_series_series_uid", "series", ["partition_key", "series_instance_uid"])
    op.create_index(
        "ix_series_pps_start_date", "series", ["partition_key", "performed_procedure_step_start_date"]
    )

    op.create_table(
        "instance",
        sa.Column("instance_key", Key, primary_key=True, autoincrement=True),
        sa.Column("series_key", Key, sa.ForeignKey("series.series_key"), nullable=False),
        sa.Column("study_key", Key, sa.ForeignKey("study.study_key"), nullable=False),
        sa.Column("partition_key", sa.Integer, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String, nullable=False),
        sa.Column("file_size", sa.BigInteger, nullable=False),
        sa.Column("number_of_frames", sa.Integer, nullable=False),
        sa.Column("frames", sa.Text, nullable=False),
        sa.Column("bulk", sa.Text, nullable=False),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("partition_key", "sop_instance_uid", name="uq_instance_uid"),
    )
    op.create_index("ix_instance_series_number", "instance", ["series_key", "instance_number"])
    op.create_index("ix_instance_study", "instance", ["study_key"])
    op.create_index("ix_instance_sop_class", "instance", ["partition_key", "sop_class_uid"])
    op.create_index("ix_instance_object_key", "instance", ["object_key"])

    op.create_table(
        "changefeed",
        sa.Column("sequence", Key, primary_key=True, autoincrement=True),
        sa.Column("partition_key", sa.Integer, nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("object_key", sa.String, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changefeed_timestamp", "changefeed", ["timestamp", "sequence"])

    op.create_table(
        "deleted_object",
        sa.Column("id", Key, primary_key=True, autoincrement=True),
        sa.Column("object_key", sa.String, nullable=False),
        sa.Column("enqueued_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_deleted_object_due", "deleted_object", ["next_attempt_at"])

    op.bulk_insert(
        partition,
        [{"partition_key": 1, "partition_name": "default", "created_at": int(time.time() * 1000)}],
    )


def downgrade() -> None:
    for name in ("deleted_object", "changefeed", "instance", "series", "study", "partition"):
        op.drop_table(name)
