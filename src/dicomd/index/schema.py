"""Table definitions (and the study-series-instance join) used by the query builders (SQLAlchemy Core).

The schema itself is created by the Alembic migrations in ./migrations (frozen copies of these
definitions); a test checks both stay identical. All timestamps are epoch milliseconds UTC in BIGINT
columns: one representation, ordered and compared the same way on SQLite and PostgreSQL.

Extended query tags can later be added as typed value tables (e.g. eqt_string(partition_key, tag_key,
study_key, series_key, instance_key, value)) keyed by the integer keys below, without touching these
tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# SQLite only auto-increments an "INTEGER PRIMARY KEY"; PostgreSQL gets BIGINT identity columns.
Key = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

DEFAULT_PARTITION_KEY = 1
DEFAULT_PARTITION_NAME = "default"

partition = Table(
    "partition",
    metadata,
    Column("partition_key", Integer, primary_key=True, autoincrement=True),
    Column("partition_name", String(64), nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
)

study = Table(
    "study",
    metadata,
    Column("study_key", Key, primary_key=True, autoincrement=True),
    Column("partition_key", Integer, ForeignKey("partition.partition_key"), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("patient_id", String),
    Column("patient_name", String),
    Column("patient_name_norm", String),
    Column("patient_name_words", String),
    Column("patient_birth_date", String),
    Column("patient_sex", String),
    Column("accession_number", String),
    Column("referring_physician_name", String),
    Column("referring_physician_name_norm", String),
    Column("referring_physician_name_words", String),
    Column("study_date", String),
    Column("study_time", String),
    Column("study_id", String),
    Column("study_description", String),
    Column("num_series", Integer, nullable=False, server_default="0"),
    Column("num_instances", Integer, nullable=False, server_default="0"),
    Column("attrs", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("partition_key", "study_instance_uid", name="uq_study_uid"),
    Index("ix_study_patient_id", "partition_key", "patient_id"),
    Index("ix_study_study_date", "partition_key", "study_date"),
    Index("ix_study_accession_number", "partition_key", "accession_number"),
    Index("ix_study_patient_birth_date", "partition_key", "patient_birth_date"),
)

# Person name search keys: one row per distinct folded component group and per folded word of a
# study's PatientName and ReferringPhysicianName (normalize.name_keys), written with the study row.
# A name wildcard with a literal prefix becomes a key range here (search.py). Byte order on both
# databases: SQLite compares TEXT as UTF-8 bytes; PostgreSQL needs the "C" collation for that.
NAME_PATIENT_GROUP, NAME_PATIENT_WORD, NAME_REFERRING_GROUP, NAME_REFERRING_WORD = 1, 2, 3, 4
NameKey = String().with_variant(String(collation="C"), "postgresql")

study_name_key = Table(
    "study_name_key",
    metadata,
    Column("partition_key", Integer, nullable=False),
    Column("field", Integer, nullable=False),
    Column("name_key", NameKey, nullable=False),
    Column("study_key", Key, ForeignKey("study.study_key"), nullable=False),
    PrimaryKeyConstraint("partition_key", "field", "name_key", "study_key", name="pk_study_name_key"),
    Index("ix_study_name_key_study", "study_key"),
    sqlite_with_rowid=False,  # the primary key is the table: a key range reads only that b-tree
)

series = Table(
    "series",
    metadata,
    Column("series_key", Key, primary_key=True, autoincrement=True),
    Column("study_key", Key, ForeignKey("study.study_key"), nullable=False),
    Column("partition_key", Integer, nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("modality", String),
    Column("series_number", Integer),
    Column("series_description", String),
    Column("performed_procedure_step_start_date", String),
    Column("performed_procedure_step_start_time", String),
    Column("body_part_examined", String),
    Column("manufacturer_model_name", String),
    Column("num_instances", Integer, nullable=False, server_default="0"),
    Column("attrs", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("partition_key", "study_key", "series_instance_uid", name="uq_series_uid"),
    Index("ix_series_study_modality", "study_key", "modality"),
    Index("ix_series_modality", "partition_key", "modality"),
    Index("ix_series_series_uid", "partition_key", "series_instance_uid"),
    Index("ix_series_pps_start_date", "partition_key", "performed_procedure_step_start_date"),
)

instance = Table(
    "instance",
    metadata,
    Column("instance_key", Key, primary_key=True, autoincrement=True),
    Column("series_key", Key, ForeignKey("series.series_key"), nullable=False),
    Column("study_key", Key, ForeignKey("study.study_key"), nullable=False),
    Column("partition_key", Integer, nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("object_key", String, nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("number_of_frames", Integer, nullable=False),
    Column("frames", Text, nullable=False),
    Column("bulk", Text, nullable=False),
    Column("attrs", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("partition_key", "sop_instance_uid", name="uq_instance_uid"),
    Index("ix_instance_series_number", "series_key", "instance_number"),
    Index("ix_instance_study", "study_key"),
    Index("ix_instance_sop_class", "partition_key", "sop_class_uid"),
    Index("ix_instance_object_key", "object_key"),  # crash recovery asks "is this object indexed?"
)

changefeed = Table(
    "changefeed",
    metadata,
    Column("sequence", Key, primary_key=True, autoincrement=True),
    Column("partition_key", Integer, nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("action", String(8), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("object_key", String, nullable=False),
    Index("ix_changefeed_timestamp", "timestamp", "sequence"),
    # a partition's feed (sequence numbers are global: a small partition's v1 page must not scan the rest)
    Index("ix_changefeed_partition", "partition_key", "sequence"),
    Index("ix_changefeed_partition_timestamp", "partition_key", "timestamp", "sequence"),
    # AUTOINCREMENT: SQLite must never reuse the sequence of a deleted newest row
    sqlite_autoincrement=True,
)

deleted_object = Table(
    "deleted_object",
    metadata,
    Column("id", Key, primary_key=True, autoincrement=True),
    Column("object_key", String, nullable=False),
    Column("enqueued_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", BigInteger, nullable=False),
    Index("ix_deleted_object_due", "next_attempt_at"),
    Index("ix_deleted_object_key", "object_key"),  # the orphan sweep asks "is this key queued?"
)

# every instance row with its series and study rows
study_series_instance = study.join(series, series.c.study_key == study.c.study_key).join(
    instance, instance.c.series_key == series.c.series_key
)

# Instances committed ahead of the flush that makes them durable (SQLite and the objects on one file
# system: one syncfs after the commit covers the staged files and the index's WAL). A row lives from
# the commit until a later transaction of the same process, after its sync; after a crash, the rows of
# a dead process's staging area name the only instances whose file may not have reached the disk, and
# start-up recovery checks each file against its size and CRC-32 (see ingest/shared_flush.py).
unsynced_object = Table(
    "unsynced_object",
    metadata,
    # no index but the row id: the table holds a few hundred rows at most, and each B-tree an insert
    # touches is one more page written per commit
    Column("id", Key, primary_key=True, autoincrement=True),
    Column("object_key", String, nullable=False),
    Column("staging_area", String, nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("checksum", BigInteger, nullable=False),
)
