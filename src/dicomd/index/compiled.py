"""SQL compiled once per statement shape and dialect, executed with values only.

Building and executing a SQLAlchemy statement costs hundreds of microseconds of CPU (construction,
cache-key generation, execution context): more than the SQL itself for the small reads QIDO and
WADO make, and a large part of a group commit, which runs inside the writer lock. The hot paths
therefore build each statement shape once with named bound parameters, keep the compiled SQL text in
one bounded cache per Index (CompiledStatements), and pass only the values per call, on the DBAPI
cursor (reads outside a transaction, and the writes of a group commit).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

CACHE_SIZE = 512


@dataclass(frozen=True, slots=True)
class CompiledSql:
    sql: str  # in the dialect's DBAPI paramstyle
    positions: tuple[str, ...] | None  # positional paramstyles: parameter name of each placeholder

    def params(self, values: dict[str, Any]) -> Any:
        """DBAPI parameters from the values by parameter name."""
        if self.positions is None:
            return values
        return tuple([values[name] for name in self.positions])


def compile_sql(
    stmt: ClauseElement, dialect: Dialect, insert_columns: Sequence[str] | None = None
) -> CompiledSql:
    """Compile a statement whose every parameter is an explicitly named bindparam().

    insert_columns: `stmt` is an INSERT of these columns, with parameters named after them; it is
    compiled for executemany (no implicit RETURNING; use .returning() to get generated keys).
    """
    if insert_columns is None:
        compiled = stmt.compile(dialect=dialect)
    else:
        compiled = stmt.compile(dialect=dialect, column_keys=list(insert_columns), for_executemany=True)
    assert isinstance(compiled, SQLCompiler)
    baked = [name for name, bind in compiled.binds.items() if not bind.required]
    if baked:  # a literal value would be frozen into the cached statement
        raise ValueError(f"statement has bound values instead of named parameters: {baked}")
    positions = tuple(compiled.positiontup or ()) if compiled.positional else None
    return CompiledSql(compiled.string, positions)


class CompiledStatements:
    """Compiled SQL by statement key for one dialect: a thread-safe LRU cache.

    The key must determine the statement completely (the builder is only called on a miss).
    """

    def __init__(self, dialect: Dialect, size: int = CACHE_SIZE) -> None:
        self._dialect = dialect
        self.dialect_name = dialect.name
        self._size = size
        self._cache: OrderedDict[Hashable, CompiledSql] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        key: Hashable,
        build: Callable[[], ClauseElement],
        *,
        insert_columns: Sequence[str] | None = None,
    ) -> CompiledSql:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        compiled = compile_sql(build(), self._dialect, insert_columns)  # a race compiles twice
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return compiled


def insert_many(cur: Any, statements: CompiledStatements, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows that all have the same columns, as one executemany of precompiled SQL on a DBAPI
    cursor."""
    columns = tuple(rows[0])
    sql = statements.get(("insert", table.name, columns), lambda: insert(table), insert_columns=columns)
    cur.executemany(sql.sql, [sql.params(row) for row in rows])
