"""C-MOVE sub-operations sent straight on the destination association (dicomd/dimse/direct_send.py): the
request's command set and PDUs against pynetdicom's encoding (the reference). Which sub-operations take
the path, and every C-MOVE behaviour through it (counts, failures, cancel, conversions, DCMTK's storescp),
are tests/dimse/test_dimse_retrieve.py's, whose moves take it (tests/dimse/conftest.py); here, a data set
too large for one write, and a destination slower than the network timeout minus the time to read an
instance."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from test_dimse_query_archive import query, start_receiver, start_scp
from test_dimse_retrieve import move

from dicomd.dimse import direct_send
from dicomd.dimse.direct import message_pdus as direct_pdus
from dicomd.dimse.passthrough import stored_data_set
from dicomd.dimse.reactor import EventDrivenAssociation

from support.dicom_files import EXPLICIT, make_instance, new_uid
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


# ---- the response catcher ---------------------------------------------------------------------------


class _Dul:
    """What the catcher hands to pynetdicom, in order."""

    def __init__(self) -> None:
        self.handed: list[bytes] = []

    def hand_over(self, pdu: bytearray) -> None:
        self.handed.append(bytes(pdu))


def _response_pdus(message_id: int, status: int, max_pdu: int, comment: str | None = None) -> list[bytes]:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = message_id
    response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = "1.2.3.4.5"
    response.Status = status
    response.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return message_pdus(message, 5, max_pdu)


@pytest.mark.parametrize("max_pdu", [16384, 30])  # 30: the command set in several PDUs
def test_the_response_is_caught_whole_or_in_fragments(max_pdu: int) -> None:
    pdus = _response_pdus(3, 0xB007, max_pdu, comment="a warning")
    assert (len(pdus) > 1) == (max_pdu == 30)
    catcher, dul = direct_send.ResponseCatcher(3), _Dul()
    assert all(catcher.take(dul, bytearray(pdu)) for pdu in pdus)  # type: ignore[arg-type]
    assert catcher.arrived.is_set() and dul.handed == []
    assert catcher.fields is not None
    assert direct_send.us(catcher.fields[direct_send.STATUS]) == 0xB007
    assert direct_send.text(catcher.fields[direct_send.ERROR_COMMENT]) == "a warning"


@pytest.mark.parametrize("max_pdu", [16384, 30])
def test_another_message_is_handed_to_pynetdicom_in_order(max_pdu: int) -> None:
    other = _response_pdus(4, 0x0000, max_pdu)  # the response to another message
    catcher, dul = direct_send.ResponseCatcher(3), _Dul()
    taken = [catcher.take(dul, bytearray(pdu)) for pdu in other]  # type: ignore[arg-type]
    assert not catcher.arrived.is_set()
    assert taken == [True] * len(other)
    assert dul.handed == other
    # the data set fragment of a message: pynetdicom's at once
    data = direct_pdus(5, b"\x08\x00\x18\x00\x00\x00\x00\x00", 16384, command=False)
    assert not catcher.take(dul, bytearray(data[0]))  # type: ignore[arg-type]
    # and the awaited response still comes through
    assert all(catcher.take(dul, bytearray(pdu)) for pdu in _response_pdus(3, 0, max_pdu))  # type: ignore[arg-type]
    assert catcher.arrived.is_set()


# ---- a move through it --------------------------------------------------------------------------------


def test_a_large_and_a_small_instance_arrive_as_stored(tmp_path: Path) -> None:
    """A data set above one write's size goes a PDU at a time; both arrive with their stored pixels."""
    receiver = start_receiver("STORESCP")
    scp = start_scp(tmp_path, {"STORESCP": ("127.0.0.1", receiver.port)})
    try:
        study = new_uid()
        large = make_instance(study=study, rows=512, columns=512)  # 512 KiB of pixel data
        small = make_instance(study=study)
        assert len(large) > direct_send.ONE_WRITE > len(small)
        scp.stow([large, small])
        result = move(scp, query("STUDY", StudyInstanceUID=study), "STORESCP")
        assert result.counts == (2, 0, 0)
        received = {str(ds.SOPInstanceUID): ds for _, ds in receiver.received}
        for original in (large, small):
            stored = pydicom.dcmread(io.BytesIO(original))
            assert bytes(received[str(stored.SOPInstanceUID)].PixelData) == bytes(stored.PixelData)
    finally:
        scp.close()
        receiver.close()


def test_the_wait_for_a_response_does_not_count_against_the_network_timeout() -> None:
    """pynetdicom pauses its reactor during a send_c_store, so its network (idle) timeout bounds only the
    time between sub-operations; the DIMSE timeout bounds the wait for a response. The direct send leaves
    the reactor running, and used to abort the association when reading the next instance plus the
    destination's store took longer than the network timeout (and write that abort amid its PDUs)."""

    def slow_store(event: Any) -> int:
        time.sleep(1.2)
        return 0x0000

    scp = AE(ae_title="DEST")
    scp.add_supported_context(CTImageStorage, EXPLICIT)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, slow_store)])
    ae = AE(ae_title="MOVER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 2
    assoc = ae.associate(
        "127.0.0.1",
        server.socket.getsockname()[1],
        ae_title="DEST",
        contexts=[build_context(CTImageStorage, EXPLICIT)],
    )
    assert isinstance(assoc, EventDrivenAssociation) and assoc.is_established
    statuses = []
    try:
        for message_id in (1, 2):
            sop = new_uid()
            data_set = stored_data_set(make_instance(sop=sop), str(CTImageStorage), sop, EXPLICIT)
            time.sleep(1.0)  # reading the next instance from the object store
            status = assoc.send_c_store(data_set, msg_id=message_id)
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
        server.shutdown()
    assert statuses == [0x0000, 0x0000] and not assoc.is_aborted


@pytest.mark.parametrize("max_pdu", [0, 64 << 20])
def test_a_peer_without_a_maximum_pdu_length_or_a_huge_one_gets_fragments_of_one_mib(max_pdu: int) -> None:
    """One PDU per instance copied it whole, made its write one long blocking call, and beyond 4 GiB
    overflowed the PDU length field."""
    data = bytes(3 * (1 << 20) + 5)
    pdus = direct_pdus(1, data, max_pdu, command=False)
    assert len(pdus) == 4 and all(len(pdu) <= (1 << 20) + 12 for pdu in pdus)
    assert b"".join(pdu[12:] for pdu in pdus) == data
