"""SQL index of dicomd: studies, series, instances, QIDO search, change feed, deletion queue."""

from dicomd.index.qido import Filter, QidoQuery, QueryError, parse_qido
from dicomd.index.schema import DEFAULT_PARTITION_KEY, DEFAULT_PARTITION_NAME
from dicomd.index.store import (
    AddResult,
    AddStatus,
    ChangeEntry,
    Index,
    NewInstance,
    PreparedInstance,
    StoredInstance,
)

__all__ = [
    "DEFAULT_PARTITION_KEY",
    "DEFAULT_PARTITION_NAME",
    "AddResult",
    "AddStatus",
    "ChangeEntry",
    "Filter",
    "Index",
    "NewInstance",
    "PreparedInstance",
    "QidoQuery",
    "QueryError",
    "StoredInstance",
    "parse_qido",
]
