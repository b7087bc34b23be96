"""The direct path's C-STORE (dimse/direct.py): a C-STORE-RQ on a storage context is stored through
``store.store_request`` (the same validation, staging, group commit, audit and statuses as pynetdicom's
handler), its data set still the received fragments, and the response written by the DUL thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicomd.audit.dimse import DimseAudit
from dicomd.dimse.command_set import encode_command, text_value, uid_value, us_value
from dicomd.dimse.direct import (
    AFFECTED_SOP_CLASS,
    AFFECTED_SOP_INSTANCE,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    ERROR_COMMENT,
    MESSAGE_ID_BEING_RESPONDED_TO,
    NO_DATA_SET,
    STATUS,
    Request,
    command_pdus,
    send_pdus,
    text,
)
from dicomd.dimse.negotiation import STORAGE_SOP_CLASSES
from dicomd.dimse.q_common import error_comment
from dicomd.dimse.store import StoreRequest, store_request

if TYPE_CHECKING:
    from dicomd.dimse.context import Gateway
    from dicomd.dimse.reactor import EventDrivenDUL

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
_STORAGE = frozenset(STORAGE_SOP_CLASSES)


def encode_store_response(
    sop_class: str, sop_instance: str, message_id: int, status: int, comment: str | None
) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2)."""
    elements = [
        (AFFECTED_SOP_CLASS, uid_value(sop_class)),
        (COMMAND_FIELD, us_value(C_STORE_RSP)),
        (MESSAGE_ID_BEING_RESPONDED_TO, us_value(message_id)),
        (COMMAND_DATA_SET_TYPE, us_value(NO_DATA_SET)),
        (STATUS, us_value(status)),
    ]
    if comment is not None:
        elements.append((ERROR_COMMENT, text_value(error_comment(comment))))
    elements.append((AFFECTED_SOP_INSTANCE, uid_value(sop_instance)))
    return encode_command(elements)


@dataclass
class DirectStore:
    """One C-STORE request taken by the direct path."""

    gateway: Gateway
    audit: DimseAudit
    request: StoreRequest

    def answer(self, dul: EventDrivenDUL, request: Request, data_set: list[memoryview]) -> None:
        """Store the data set and send the response (in the DUL thread, as pynetdicom's DT-1 would)."""
        stored = self.request
        status, comment = store_request(self.gateway, self.audit, request.record, stored, data_set)
        command = encode_store_response(
            stored.sop_class, stored.sop_instance, request.message_id, status, comment
        )
        send_pdus(dul, command_pdus(request.context_id, command, request.max_pdu))


def start_store(request: Request, gateway: Gateway, audit: DimseAudit) -> DirectStore | None:
    """A C-STORE-RQ on a storage context (routed by the context's abstract syntax, as pynetdicom routes a
    request to its service class)."""
    if str(request.context.abstract_syntax) not in _STORAGE:
        return None
    fields = request.fields
    stored = StoreRequest(
        text(fields.get(AFFECTED_SOP_CLASS)),
        text(fields.get(AFFECTED_SOP_INSTANCE)),
        str(request.context.transfer_syntax[0]),
    )
    return DirectStore(gateway, audit, stored)
