"""The direct C-STORE path (dicomd/dimse/direct.py, direct_store.py): its command set codec against
pynetdicom's encoding (the reference), and a listener process that counts what the path takes: a plain
C-STORE is answered by it, one it does not take (a command set in several fragments) still by pynetdicom,
a peer with a tiny maximum PDU gets its response in fragments, a C-STORE on a non-storage context is left
to pynetdicom (the path is chosen by the context, as pynetdicom routes), a failure carries its error
comment, and a PDV of another message inside a C-STORE's data set aborts that association only.
Byte-for-byte storage through this path is what tests/dimse/test_dimse_store.py checks (every store there
takes it)."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import build_context
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from dicomd.dimse import direct, direct_store
from dicomd.dimse.command_set import decode_command
from dicomd.dimse.direct import command_pdus, pdv_items
from dicomd.dimse.direct_store import encode_store_response
from dicomd.dimse.q_common import error_comment

from support.dicom_files import EXPLICIT, make_instance, new_uid
from support.dicomweb import wait_for
from support.dimse import DICOMD_AE, client_ae, echo, message_pdus, paused_reactor, store_request
from support.direct_listener import Listener, direct_listener

MAX_PDU = 16384


def _reference_response(status: int, comment: str | None, max_pdu: int) -> list[bytes]:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = CTImageStorage
    response.AffectedSOPInstanceUID = "1.2.3.45"
    response.Status = status
    if comment is not None:
        response.ErrorComment = error_comment(comment)  # LO: cut to 64 characters, as every response
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    return message_pdus(message, 3, max_pdu)


# ---- the codec, against pynetdicom's ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "comment"),
    [(0x0000, None), (0xB007, "odd length."), (0xA900, "even length"), (0xC000, "x" * 80)],
)
@pytest.mark.parametrize("max_pdu", [0, MAX_PDU, 40, 23])
def test_the_response_is_what_pynetdicom_encodes(status: int, comment: str | None, max_pdu: int) -> None:
    command = encode_store_response(str(CTImageStorage), "1.2.3.45", 7, status, comment)
    assert command_pdus(3, command, max_pdu) == _reference_response(status, comment, max_pdu)
    if max_pdu == 23:
        assert len(command_pdus(3, command, max_pdu)) > 5  # fragments of the command set


def test_a_pynetdicom_request_decodes() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    pdus = message_pdus(store_request(ds, message_id=513), 5, MAX_PDU)
    items = pdv_items(pdus[0])
    assert items is not None and len(items) == 1
    context_id, control, command = items[0]
    assert (context_id, control) == (5, direct.COMMAND | direct.LAST)
    fields = decode_command(command)
    assert fields is not None
    assert struct.unpack("<H", fields[direct.COMMAND_FIELD])[0] == direct_store.C_STORE_RQ
    assert struct.unpack("<H", fields[direct.MESSAGE_ID])[0] == 513
    assert fields[direct.AFFECTED_SOP_INSTANCE].rstrip(b"\0").decode() == ds.SOPInstanceUID
    data = b"".join(bytes(value) for pdu in pdus[1:] for _, _, value in pdv_items(pdu) or [])
    assert data == encode(ds, False, True)


@pytest.mark.parametrize(
    "pdu",
    [
        b"\x04\x00\x00\x00\x00\x00",  # no PDV item
        b"\x04\x00\x00\x00\x00\x05\x00\x00\x00\x09\x01",  # an item longer than the PDU
        b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x01\x01\x03",  # an item shorter than its header
        b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x02\x01\x03\x00\x00",  # trailing bytes
    ],
)
def test_malformed_pdv_items_are_left_to_pynetdicom(pdu: bytes) -> None:
    assert pdv_items(pdu) is None


def test_a_command_set_that_does_not_decode_is_none() -> None:
    assert decode_command(b"\x00\x00\x00\x00\x04\x00\x00\x00") is None  # too short a value
    assert decode_command(struct.pack("<HHL", 0x0008, 0x0016, 0)) is None  # not group 0000


# ---- a listener in this process ------------------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    with direct_listener(tmp_path / "data", max_pdu=MAX_PDU) as served:
        yield served


def _associate(port: int, max_pdu: int = MAX_PDU) -> Any:
    ae = client_ae()
    ae.maximum_pdu_size = max_pdu
    contexts = [build_context(CTImageStorage, EXPLICIT), build_context(Verification)]
    assoc = ae.associate("127.0.0.1", port, ae_title=DICOMD_AE, contexts=contexts)
    assert assoc.is_established
    return assoc


def _context_id(assoc: Any, abstract_syntax: str) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == abstract_syntax)


def _exchange(assoc: Any, pdus: list[bytes]) -> Any:
    """Send raw PDUs on a pynetdicom association and wait for the response."""
    with paused_reactor(assoc):
        for pdu in pdus:
            assoc.dul.socket.send(pdu)
        _, response = assoc.dimse.get_msg(block=True)
    return response


@pytest.mark.parametrize("max_pdu", [MAX_PDU, 48])  # 48: the peer gets each response in fragments
def test_a_plain_c_store_takes_the_direct_path(listener: Listener, max_pdu: int) -> None:
    assoc = _associate(listener.port, max_pdu)
    try:
        for _ in range(3):
            ds = pydicom.dcmread(io.BytesIO(make_instance()))
            assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000  # other messages: pynetdicom, on the same association
    finally:
        assoc.release()
    assert listener.taken == 3


def test_a_fragmented_command_set_goes_to_pynetdicom_and_is_stored(listener: Listener) -> None:
    assoc = _associate(listener.port)
    try:
        ds = pydicom.dcmread(io.BytesIO(make_instance()))
        pdus = message_pdus(store_request(ds, message_id=9), _context_id(assoc, CTImageStorage), 64)
        assert len(pdus) > 3  # the command set alone takes several PDUs
        response = _exchange(assoc, pdus)
        assert (response.Status, response.MessageIDBeingRespondedTo) == (0x0000, 9)
        # and the next plain one is the direct path's again
        assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(make_instance()))).Status == 0x0000
    finally:
        assoc.release()
    assert listener.taken == 1


def test_a_failure_carries_its_status_and_error_comment(listener: Listener) -> None:
    assoc = _associate(listener.port)
    try:
        ds = pydicom.dcmread(io.BytesIO(make_instance()))
        other = new_uid()  # the command names another instance than the data set holds
        message = store_request(ds, message_id=2, sop_instance=other)
        response = _exchange(assoc, message_pdus(message, _context_id(assoc, CTImageStorage), MAX_PDU))
        assert response.Status == 0xA900
        assert "not the SOP instance the C-STORE request names" in response.ErrorComment
        assert response.AffectedSOPInstanceUID == other
    finally:
        assoc.release()
    assert listener.taken == 1


def test_a_pdv_of_another_message_inside_a_data_set_aborts_that_association(listener: Listener) -> None:
    assoc = _associate(listener.port)
    ds = pydicom.dcmread(io.BytesIO(make_instance(rows=256, columns=256)))
    store_pdus = message_pdus(store_request(ds), _context_id(assoc, CTImageStorage), 4096)
    assert len(store_pdus) > 3
    echo_request = C_ECHO()
    echo_request.MessageID = 2
    echo_request.AffectedSOPClassUID = Verification
    echo_message = C_ECHO_RQ()
    echo_message.primitive_to_message(echo_request)
    echo_pdus = message_pdus(echo_message, _context_id(assoc, Verification), 4096)
    raw = assoc.dul.socket.socket
    for pdu in [*store_pdus[:2], *echo_pdus]:  # the C-STORE's command and first fragment, then an echo
        raw.sendall(pdu)
    assert wait_for(lambda: not assoc.is_alive(), timeout=10)
    assert assoc.is_aborted
    assert listener.taken == 0
    assert echo(listener.port) == 0x0000  # the listener serves on
    fresh = _associate(listener.port)
    try:
        assert fresh.send_c_store(pydicom.dcmread(io.BytesIO(make_instance()))).Status == 0x0000
    finally:
        fresh.release()
    assert listener.taken == 1


def test_a_c_store_on_a_non_storage_context_is_left_to_pynetdicom(listener: Listener) -> None:
    """The path is chosen by the presentation context's abstract syntax, as pynetdicom routes a request
    to its service class, not by the SOP class the command names."""
    assoc = _associate(listener.port)
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    for pdu in message_pdus(store_request(ds), _context_id(assoc, Verification), MAX_PDU):
        assoc.dul.socket.send(pdu)
    assert not wait_for(lambda: listener.taken > 0, timeout=3)  # (the store path takes it in ~10 ms)
    assoc.abort()
    assert echo(listener.port) == 0x0000
