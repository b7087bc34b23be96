"""Alembic environment: dicomd passes an open connection in config.attributes["connection"]."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dicomd.index.schema import metadata

config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables for future migrations
        render_as_batch=getattr(connection, "dialect", None) is not None
        and connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # developer use: `alembic -x url=... upgrade head` / `revision --autogenerate`
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or use dicomd.index.Index.migrate()")
    engine = create_engine(url)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
