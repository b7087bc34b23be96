"""C-MOVE sub-operations sent straight on the destination association (dicomd/dimse/direct_send.py): the
request's command set and PDUs against pynetdicom's encoding (the reference). Which sub-operations take
the path, and every C-MOVE behaviour through it (counts, failures, cancel, conversions, DCMTK's storescp),
are tests/dimse/test_dimse_retrieve.py's, whose moves take it (tests/dimse/conftest.py)."""

from __future__ import annotations

import io

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from dicomd.dimse import direct_send
from dicomd.dimse.direct import message_pdus as direct_pdus

from support.dimse import message_pdus


@pytest.mark.parametrize(("originator", "originator_id"), [(None, None), ("MOVESCU", 7), ("ODDAE", 65535)])
@pytest.mark.parametrize("max_pdu", [0, 16384, 50])
def test_the_request_is_what_pynetdicom_encodes(
    originator: str | None, originator_id: int | None, max_pdu: int
) -> None:
    data = bytes(range(256)) * 3
    request = C_STORE()
    request.MessageID = 3
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3.4.5"
    request.Priority = 2
    request.MoveOriginatorApplicationEntityTitle = originator
    request.MoveOriginatorMessageID = originator_id
    request.DataSet = io.BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    command = direct_send.encode_store_request(
        str(CTImageStorage), "1.2.3.4.5", 3, 2, originator, originator_id
    )
    mine = direct_pdus(5, command, max_pdu, command=True) + direct_pdus(5, data, max_pdu, command=False)
    assert mine == message_pdus(message, 5, max_pdu)
