"""Person name search keys: study_name_key, built for the studies already indexed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# frozen copies of this revision's types and key rules (schema.py / normalize.py may evolve)
Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NameKey = sa.String().with_variant(sa.String(collation="C"), "postgresql")
MAX_NAME_KEY = 64
_CHUNK = 5000  # studies read per query while building the keys


def _keys(norm: str | None, words: str | None) -> tuple[set[str], set[str]]:
    groups = {g[:MAX_NAME_KEY] for g in (norm or "").split("=") if g}
    word_keys = {w[:MAX_NAME_KEY] for w in (words or "").split(" ") if w}
    return groups, word_keys


def upgrade() -> None:
    name_key = op.create_table(
        "study_name_key",
        sa.Column("partition_key", sa.Integer, nullable=False),
        sa.Column("field", sa.Integer, nullable=False),
        sa.Column("name_key", NameKey, nullable=False),
        sa.Column("study_key", Key, sa.ForeignKey("study.study_key"), nullable=False),
        sa.PrimaryKeyConstraint("partition_key", "field", "name_key", "study_key", name="pk_study_name_key"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_study_name_key_study", "study_name_key", ["study_key"])

    conn = op.get_bind()
    study = sa.table(
        "study",
        sa.column("study_key"),
        sa.column("partition_key"),
        sa.column("patient_name_norm"),
        sa.column("patient_name_words"),
        sa.column("referring_physician_name_norm"),
        sa.column("referring_physician_name_words"),
    )
    last = -1
    while True:
        rows = conn.execute(
            sa.select(study).where(study.c.study_key > last).order_by(study.c.study_key).limit(_CHUNK)
        ).all()
        if not rows:
            break
        last = rows[-1].study_key
        keys: list[dict[str, object]] = []
        for r in rows:
            for fields, norm, words in (
                ((1, 2), r.patient_name_norm, r.patient_name_words),
                ((3, 4), r.referring_physician_name_norm, r.referring_physician_name_words),
            ):
                for field, values in zip(fields, _keys(norm, words), strict=True):
                    keys += [
                        {
                            "partition_key": r.partition_key,
                            "field": field,
                            "name_key": v,
                            "study_key": r.study_key,
                        }
                        for v in values
                    ]
        if keys:
            conn.execute(sa.insert(name_key), keys)
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("ANALYZE study_name_key"))


def downgrade() -> None:
    op.drop_table("study_name_key")
