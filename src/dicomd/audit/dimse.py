"""Audit events of the DIMSE gateway, in the same trail and vocabulary as the HTTP API's (audit/events.py).

Per association, when it ends (accepted or not): PS3.15 User Authentication (110114) with event type Login
(110122): who called (calling AE title, address), whom (called AE title), how it ended (accepted and
released, aborted, rejected and why) and what it did (operations by kind). Per operation, when its final
response is sent: C-STORE as Import (one event per instance, as a one-instance STOW), C-FIND as Query,
C-MOVE / C-GET as DICOM Instances Transferred (with the sub-operation counts), a storage commitment
N-ACTION as Query (with the number of instances it names); a C-ECHO touches no PHI and is
only counted. The events carry the association's id, so the two kinds join.

The listener process opens one sink (audit/sink.py), as each web worker does."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from dicomd.audit.events import (
    IMPORT,
    INSTANCES_TRANSFERRED,
    OUTCOME_MAJOR_FAILURE,
    OUTCOME_MINOR_FAILURE,
    OUTCOME_SERIOUS_FAILURE,
    OUTCOME_SUCCESS,
    QUERY,
    ActionCode,
    EventId,
)
from dicomd.audit.sink import AuditSink
from dicomd.index.schema import DEFAULT_PARTITION_NAME

USER_AUTHENTICATION = EventId("110114", "User Authentication")
LOGIN = {"code": "110122", "scheme": "DCM", "display": "Login"}

_AUDIT_SOURCE = socket.gethostname()
# the query keys of a C-FIND / C-MOVE / C-GET kept in its event: bounded (an identifier may be large)
MAX_QUERY_KEYS = 64
MAX_QUERY_VALUE = 256

_OPERATION_EVENTS: dict[str, tuple[EventId, ActionCode]] = {
    "C-STORE": (IMPORT, "C"),
    "C-FIND": (QUERY, "E"),
    "C-MOVE": (INSTANCES_TRANSFERRED, "R"),
    "C-GET": (INSTANCES_TRANSFERRED, "R"),
    "N-ACTION": (QUERY, "E"),  # a storage commitment request: are these instances held?
}


def status_outcome(status: int) -> int:
    """The PS3.15 outcome of a DIMSE status: success, warning (minor failure), cancel or failure."""
    if status == 0x0000:
        return OUTCOME_SUCCESS
    if status == 0xFE00 or (status & 0xF000) == 0xB000 or status == 0x0001 or status == 0x0107:
        return OUTCOME_MINOR_FAILURE
    if status in (0x0110, 0xC211, 0xC001, 0xC002) or (status & 0xFF00) == 0xA700:
        return OUTCOME_MAJOR_FAILURE  # dicomd failed (a fault, out of resources), not the request
    return OUTCOME_SERIOUS_FAILURE


@dataclass
class AssociationRecord:
    """What the audit trail says about one association; filled in as it goes (its handlers run in the
    association's thread, so one writer at a time, but the counters are locked anyway)."""

    address: str
    port: int
    tls: bool
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    started: float = field(default_factory=time.time)
    calling_ae: str = ""
    called_ae: str = ""
    accepted: bool = False
    rejection: str | None = None  # why it was rejected
    operations: dict[str, int] = field(default_factory=dict)
    # operations under way: message id -> what dimse/operations.py noted, until the final response
    queries: dict[int, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, operation: str) -> None:
        with self.lock:
            self.operations[operation] = self.operations.get(operation, 0) + 1


class DimseAudit:
    """Writes the gateway's events to ``sink`` (None: audit off)."""

    def __init__(self, sink: AuditSink | None) -> None:
        self.sink = sink
        # each association's record, from its start (the listener's request handler) to its end
        self._records: weakref.WeakKeyDictionary[object, AssociationRecord] = weakref.WeakKeyDictionary()
        self._records_lock = threading.Lock()

    def attach(self, association: object, record: AssociationRecord) -> None:
        with self._records_lock:
            self._records[association] = record

    def record_of(self, association: object) -> AssociationRecord:
        """The association's record (a blank one for an association the listener did not start)."""
        with self._records_lock:
            found = self._records.get(association)
        return found if found is not None else AssociationRecord(address="", port=0, tls=False)

    def _write(self, event: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.write(orjson.dumps(event, default=str) + b"\n")

    def _base(self, record: AssociationRecord, started: float) -> dict[str, Any]:
        return {
            "time": datetime.fromtimestamp(started, UTC).isoformat(timespec="microseconds"),
            "who": {"subject": record.calling_ae, "method": "ae-title"} if record.calling_ae else None,
            "client": {"address": record.address, "port": record.port},
            "source": _AUDIT_SOURCE,
            "worker": os.getpid(),
            "protocol": "dimse",
            "association": record.id,
            "called_ae": record.called_ae,
            "tls": record.tls,
        }

    def association_ended(self, record: AssociationRecord, *, aborted: bool) -> None:
        """The association's own event: accepted (then released or aborted) or rejected."""
        if record.rejection is not None or not record.accepted:
            outcome, ended = OUTCOME_SERIOUS_FAILURE, "rejected" if record.rejection else "abandoned"
        elif aborted:
            outcome, ended = OUTCOME_MINOR_FAILURE, "aborted"
        else:
            outcome, ended = OUTCOME_SUCCESS, "released"
        event = self._base(record, record.started)
        event.update(
            event_id=USER_AUTHENTICATION.as_json(),
            event_type=LOGIN,
            action="E",
            outcome=outcome,
            ended=ended,
            duration_ms=round((time.time() - record.started) * 1000, 3),
            operations=dict(record.operations),
        )
        if record.rejection is not None:
            event["rejection"] = record.rejection
        self._write(event)

    def operation(
        self,
        record: AssociationRecord,
        operation: str,
        status: int,
        started: float,
        **facts: Any,
    ) -> None:
        """One C-STORE, C-FIND, C-MOVE or C-GET, once its final status is known."""
        event_id, action = _OPERATION_EVENTS[operation]
        event = self._base(record, started)
        event.update(
            event_id=event_id.as_json(),
            action=action,
            outcome=status_outcome(status),
            status=status,
            duration_ms=round((time.time() - started) * 1000, 3),
            method=operation,
            partition=DEFAULT_PARTITION_NAME,
            **facts,
        )
        self._write(event)
