"""Audit of the query and retrieve operations (C-FIND, C-MOVE, C-GET): their handlers (dimse/query.py,
dimse/retrieve.py) are wrapped to note each request (its keys, when it started), and the event is written
when pynetdicom sends the operation's final response (EVT_DIMSE_SENT), whose status and sub-operation
counts only pynetdicom knows."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomd.audit.dimse import MAX_QUERY_KEYS, MAX_QUERY_VALUE, DimseAudit

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.events import Event

PENDING_STATUSES = frozenset({0xFF00, 0xFF01})
_RESPONSES = {"C_FIND_RSP": "C-FIND", "C_MOVE_RSP": "C-MOVE", "C_GET_RSP": "C-GET"}
_SUB_OPERATIONS = (
    ("NumberOfCompletedSuboperations", "completed"),
    ("NumberOfFailedSuboperations", "failed"),
    ("NumberOfWarningSuboperations", "warning"),
)


@dataclass
class PendingOperation:
    operation: str
    started: float
    sop_class: str
    query: dict[str, str]
    responses: int = 0  # pending responses sent (C-FIND: matches)


def query_keys(identifier_of: Callable[[], Dataset]) -> dict[str, str]:
    """The request identifier's keys that have a value (bounded), for the audit event; {} when it does
    not decode (the handler answers that)."""
    try:
        identifier = identifier_of()
        keys: dict[str, str] = {}
        for element in identifier:
            if len(keys) >= MAX_QUERY_KEYS:
                break
            if element.VR == "SQ" or element.value in (None, "", b""):
                continue
            keys[element.keyword or str(element.tag)] = str(element.value)[:MAX_QUERY_VALUE]
        return keys
    except Exception:
        return {}


def audited_operation(
    handler: Callable[..., Iterator[Any]], operation: str, audit: DimseAudit
) -> Callable[..., Iterator[Any]]:
    """``handler`` (a pynetdicom generator handler), noting its request in the association's record."""

    @functools.wraps(handler)
    def wrapped(event: Event, *args: Any) -> Iterator[Any]:
        record = audit.record_of(event.assoc)
        record.count(operation)
        request = event.request
        pending = PendingOperation(
            operation,
            time.time(),
            str(getattr(request, "AffectedSOPClassUID", "") or ""),
            query_keys(lambda: event.identifier),
        )
        with record.lock:
            record.queries[int(request.MessageID or 0)] = pending
        yield from handler(event, *args)

    return wrapped


def note_response(event: Event, audit: DimseAudit) -> None:
    """EVT_DIMSE_SENT: a C-FIND/C-MOVE/C-GET response; the final one writes the operation's event."""
    message = event.message
    operation = _RESPONSES.get(type(message).__name__)
    if operation is None:
        return
    command = message.command_set
    status = int(getattr(command, "Status", 0) or 0)
    record = audit.record_of(event.assoc)
    message_id = int(getattr(command, "MessageIDBeingRespondedTo", 0) or 0)
    with record.lock:
        pending = record.queries.get(message_id)
        if pending is None:
            return
        if status in PENDING_STATUSES:
            pending.responses += 1
            return
        del record.queries[message_id]
    facts: dict[str, Any] = {"sop_class": pending.sop_class, "query": pending.query}
    if operation == "C-FIND":
        facts["matches"] = pending.responses
    else:
        facts["sub_operations"] = {
            name: int(getattr(command, keyword))
            for keyword, name in _SUB_OPERATIONS
            if getattr(command, keyword, None) is not None
        }
    audit.operation(record, operation, status, pending.started, **facts)
