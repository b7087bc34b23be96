"""The direct C-FIND path (dicomd/dimse/direct_find.py): its response codec against pynetdicom's encoding
(the reference); against a listener process that counts what the path takes, the responses it sends are
those pynetdicom's path sends for the same request (a request whose command set comes in fragments goes
there), in both little endian syntaxes and for matches, failures and unsupported keys; a C-CANCEL ends the
matches; a peer that aborts among them leaves the listener serving; one that stops reading is
disconnected. Matching itself is
tests/dimse/test_dimse_query.py's (the same ``query.find_responses`` behind both paths)."""

from __future__ import annotations

import contextlib
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import build_context, transport
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_ECHO_RQ, C_FIND_RQ, C_FIND_RSP
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from test_dimse_query_archive import query

from dicomd.dimse.command_set import decode_command
from dicomd.dimse.direct import COMMAND, LAST, STATUS, is_cancel_of, pdv_items, us
from dicomd.dimse.direct import message_pdus as direct_pdus
from dicomd.dimse.direct_find import encode_find_response
from dicomd.dimse.q_common import error_comment
from dicomd.dimse.reactor import P_DATA_TF, PDU_HEADER

from support.dicom_files import CHARSET_FILES, EXPLICIT, TEST_FILES, make_instance, new_uid
from support.dicomweb import wait_for
from support.dimse import DICOMD_AE, client_ae, echo, message_pdus, paused_reactor
from support.direct_listener import Listener, direct_listener

STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind
PATIENT_ROOT = PatientRootQueryRetrieveInformationModelFind
MAX_PDU = 16384
PENDING = (0xFF00, 0xFF01)
IMPLICIT = str(ImplicitVRLittleEndian)


# ---- the codec, against pynetdicom's ----------------------------------------------------------------


def _reference(status: int, comment: str | None, identifier: bytes | None, max_pdu: int) -> list[bytes]:
    response = C_FIND()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = STUDY_ROOT
    response.Status = status
    if comment is not None:
        response.ErrorComment = error_comment(comment)
    if identifier is not None:
        response.Identifier = io.BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(response)
    return message_pdus(message, 3, max_pdu)


@pytest.mark.parametrize(
    ("status", "comment", "with_identifier"),
    [
        (0xFF00, None, True),
        (0xFF01, None, True),
        (0x0000, None, False),
        (0xFE00, None, False),
        (0xA900, "QueryRetrieveLevel is required", False),
        (0xC000, "y" * 70, False),
    ],
)
@pytest.mark.parametrize("max_pdu", [0, MAX_PDU, 30])
def test_a_response_is_what_pynetdicom_encodes(
    status: int, comment: str | None, with_identifier: bool, max_pdu: int
) -> None:
    identifier = None
    if with_identifier:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = "PAT-1"
        identifier = encode(ds, False, True)
    command = encode_find_response(str(STUDY_ROOT), 7, status, comment, data=identifier is not None)
    pdus = direct_pdus(3, command, max_pdu, command=True)
    if identifier is not None:
        pdus += direct_pdus(3, identifier, max_pdu, command=False)
    assert pdus == _reference(status, comment, identifier, max_pdu)


def _cancel_pdus(message_id: int) -> list[bytes]:
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = message_id
    message = C_CANCEL_RQ()
    message.primitive_to_message(cancel)
    return message_pdus(message, 1, MAX_PDU)


def test_a_c_cancel_is_recognised_for_its_request_only() -> None:
    (pdu,) = _cancel_pdus(5)
    assert is_cancel_of(bytearray(pdu), 5)
    assert not is_cancel_of(bytearray(pdu), 6)
    request = C_ECHO()
    request.MessageID = 5
    request.AffectedSOPClassUID = Verification
    echo_message = C_ECHO_RQ()
    echo_message.primitive_to_message(request)
    (echo_pdu,) = message_pdus(echo_message, 1, MAX_PDU)
    assert not is_cancel_of(bytearray(echo_pdu), 5)
    assert not is_cancel_of(bytearray(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"), 5)  # an A-ABORT


# ---- a listener process ---------------------------------------------------------------------------


def _store(port: int, files: list[bytes]) -> None:
    ae = client_ae()
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=DICOMD_AE, contexts=[build_context(CTImageStorage, EXPLICIT)]
    )
    assert assoc.is_established
    try:
        for data in files:
            assert assoc.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status == 0x0000
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    """Patient A (two studies), patient B (one study, a non-ASCII name), stored through the listener."""
    with direct_listener(tmp_path_factory.mktemp("direct-find") / "data") as served:
        a = {"patient_id": "DF-A", "patient_name": "Doe^John"}
        files = [
            make_instance(**a, study=new_uid(), StudyDate="20240102", AccessionNumber="ACC1"),
            make_instance(**a, study=new_uid(), StudyDate="20230615", AccessionNumber="ACC2"),
            make_instance(
                patient_id="DF-B", patient_name="Müller^Jürgen", study=new_uid(), StudyDate="20240301"
            ),
        ]
        _store(served.port, files)
        yield served


def _associate(port: int, model: str, syntax: str) -> Any:
    ae = client_ae()
    assoc = ae.associate("127.0.0.1", port, ae_title=DICOMD_AE, contexts=[build_context(model, syntax)])
    assert assoc.is_established
    return assoc


def _request(identifier: Dataset, model: str, implicit: bool, message_id: int) -> C_FIND_RQ:
    request = C_FIND()
    request.MessageID = message_id
    request.AffectedSOPClassUID = model
    request.Priority = 2
    request.Identifier = io.BytesIO(encode(identifier, implicit, True))
    message = C_FIND_RQ()
    message.primitive_to_message(request)
    return message


def _responses(assoc: Any, pdus: list[bytes]) -> list[tuple[int, str, bytes | None]]:
    """Send a request's raw PDUs; every response as (status, error comment, identifier bytes)."""
    out: list[tuple[int, str, bytes | None]] = []
    with paused_reactor(assoc):
        for pdu in pdus:
            assoc.dul.socket.send(pdu)
        while True:
            _, response = assoc.dimse.get_msg(block=True)
            assert response is not None, "no response"
            data = response.Identifier.getvalue() if response.Identifier is not None else None
            out.append((int(response.Status), str(response.ErrorComment or ""), data or None))
            if int(response.Status) not in PENDING:
                return out


QUERIES = [
    (STUDY_ROOT, query("STUDY", PatientID="DF-A", StudyInstanceUID="", StudyDate="", AccessionNumber="")),
    (STUDY_ROOT, query("STUDY", PatientName="m*", PatientID="", StudyInstanceUID="")),
    (STUDY_ROOT, query("SERIES", PatientID="DF-B", Modality="", SeriesInstanceUID="")),
    (PATIENT_ROOT, query("PATIENT", PatientID="DF-*", PatientName="", NumberOfPatientRelatedStudies="")),
    (STUDY_ROOT, query("STUDY", PatientID="DF-A", InstitutionName="Somewhere")),  # 0xFF01
    (STUDY_ROOT, query("STUDY", PatientID="NOBODY")),  # no match
    (STUDY_ROOT, query("FOO", PatientID="DF-A")),  # 0xA900
    (STUDY_ROOT, query("STUDY", StudyDate="2024-01-01")),  # 0xC000: an invalid date
]


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
def test_the_direct_path_answers_as_pynetdicom_does(archive: Listener, syntax: str) -> None:
    implicit = syntax == IMPLICIT
    outcomes: list[list[int]] = []
    for n, (model, identifier) in enumerate(QUERIES):
        assoc = _associate(archive.port, model, syntax)
        try:
            context_id = assoc.accepted_contexts[0].context_id
            taken = archive.taken
            direct = _responses(
                assoc, message_pdus(_request(identifier, model, implicit, 1), context_id, MAX_PDU)
            )
            assert archive.taken == taken + 1
            # a command set in fragments is pynetdicom's to answer
            reference = _responses(
                assoc, message_pdus(_request(identifier, model, implicit, 2), context_id, 40)
            )
            assert archive.taken == taken + 1
        finally:
            assoc.release()
        assert direct == reference, f"query {n}"
        outcomes.append([status for status, _, _ in direct])
    assert outcomes[0] == [0xFF00, 0xFF00, 0x0000]  # patient A's two studies
    assert outcomes[4] == [0xFF01, 0xFF01, 0x0000]  # a key the index does not search
    assert outcomes[5] == [0x0000]
    assert outcomes[6] == [0xA900] and outcomes[7] == [0xC000]


def _responses_of(archive: Listener, query: tuple[str, Dataset]) -> list[tuple[int, str, bytes | None]]:
    model, identifier = query
    assoc = _associate(archive.port, model, EXPLICIT)
    try:
        pdus = message_pdus(
            _request(identifier, model, False, 1), assoc.accepted_contexts[0].context_id, MAX_PDU
        )
        return _responses(assoc, pdus)
    finally:
        assoc.release()


def test_answers_are_in_utf8_whatever_the_query_was_in(archive: Listener) -> None:
    identifier = query("STUDY", PatientID="DF-B", PatientName="")
    identifier.SpecificCharacterSet = "ISO_IR 100"
    responses = _responses_of(archive, (STUDY_ROOT, identifier))
    data = responses[0][2]
    assert data is not None and "Müller^Jürgen".encode() in data
    answer = decode(io.BytesIO(data), False, True, False)
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Müller^Jürgen"


@pytest.fixture(scope="module")
def slow_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    """Eight studies, each match answered 0.1 s late."""
    with direct_listener(tmp_path_factory.mktemp("slow-find") / "data", answer_delay=0.1) as served:
        _store(served.port, [make_instance(patient_id="DF-SLOW", study=new_uid()) for _ in range(8)])
        yield served


def test_a_c_cancel_ends_the_matches_and_the_association_goes_on(slow_archive: Listener) -> None:
    assoc = _associate(slow_archive.port, STUDY_ROOT, EXPLICIT)
    statuses = []
    try:
        taken = slow_archive.taken
        for status, _ in assoc.send_c_find(
            query("STUDY", PatientID="DF-SLOW", StudyInstanceUID=""), STUDY_ROOT
        ):
            assert status is not None and "Status" in status
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                assoc.send_c_cancel(1, None, query_model=STUDY_ROOT)
        assert statuses[-1] == 0xFE00
        assert 1 <= statuses.count(0xFF00) < 8
        assert slow_archive.taken == taken + 1
        # the next request on the same association is answered in full
        after = [int(s.Status) for s, _ in assoc.send_c_find(query("STUDY", PatientID="DF-SLOW"), STUDY_ROOT)]
        assert after == [0xFF00] * 8 + [0x0000]
    finally:
        assoc.release()


def test_a_peer_that_aborts_among_the_matches_leaves_the_listener_serving(slow_archive: Listener) -> None:
    assoc = _associate(slow_archive.port, STUDY_ROOT, EXPLICIT)
    responses = assoc.send_c_find(query("STUDY", PatientID="DF-SLOW"), STUDY_ROOT)
    status, _ = next(responses)
    assert status.Status == 0xFF00
    assoc.abort()
    assert wait_for(lambda: not assoc.is_alive(), timeout=10)
    assert echo(slow_archive.port) == 0x0000
    assert _statuses_on_a_fresh_association(slow_archive, "DF-SLOW") == [0xFF00] * 8 + [0x0000]


def _statuses_on_a_fresh_association(served: Listener, patient_id: str) -> list[int]:
    """What a new association that reads everything gets for the studies of ``patient_id``."""
    fresh = _associate(served.port, STUDY_ROOT, EXPLICIT)
    try:
        return [int(s.Status) for s, _ in fresh.send_c_find(query("STUDY", PatientID=patient_id), STUDY_ROOT)]
    finally:
        fresh.release()


def test_an_audit_event_per_direct_c_find(archive: Listener) -> None:
    before = _audit_finds(archive.data_dir)
    _responses_of(archive, (STUDY_ROOT, query("STUDY", PatientID="DF-A", StudyInstanceUID="")))
    assert wait_for(lambda: len(_audit_finds(archive.data_dir)) == len(before) + 1)
    event = _audit_finds(archive.data_dir)[-1]
    assert event["matches"] == 2 and event["status"] == 0x0000
    assert event["query"] == {"QueryRetrieveLevel": "STUDY", "PatientID": "DF-A"}
    assert event["sop_class"] == str(STUDY_ROOT)


def _audit_finds(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [e for e in map(orjson.loads, path.read_bytes().splitlines()) if e.get("method") == "C-FIND"]


# ---- answers encoded without pydicom, against pydicom ------------------------------------------------


def test_answers_encode_as_pydicom_encodes_them() -> None:
    """encode_answer against pynetdicom's encode (pydicom's writer), its reference: an answer with each
    key of every bundled file, one key at a time and all keys at once, in both little endian syntaxes;
    what it does not encode itself (None) goes to pydicom."""
    from pydicom.dataelem import DataElement

    from dicomd.dicom.parser import parse_file
    from dicomd.dimse.direct_find import encode_answer
    from dicomd.dimse.query import Translation, answer

    fast = 0
    for path in sorted([*TEST_FILES.iterdir(), *CHARSET_FILES.iterdir()]):
        try:
            found = parse_file(path).dataset
        except Exception:
            continue  # not a file our parser stores
        keys = [
            DataElement(int(tag, 16), value.get("vr", "UN"), None)
            for tag, value in found.items()
            if not tag.startswith("0002") and tag != "00080005"
        ]
        for chosen in [*([key] for key in keys), keys]:
            identifier = answer(found, Translation(return_keys=chosen), "STUDY", "DICOMD")
            for implicit in (True, False):
                mine = encode_answer(identifier, implicit)
                if mine is not None:
                    assert mine == encode(identifier, implicit, True), (path.name, [k.tag for k in chosen])
                    fast += 1
    assert fast > 2000


def test_answers_from_the_index_json_are_the_bytes_of_the_data_set_path() -> None:
    """encode_answer_json against the data set path it stands in for (query.answer, then encode_answer or
    pydicom's writer): an answer with each key of every bundled file, one key at a time and all keys at
    once, plus keys the match lacks (text, ambiguous VR, sequence), in both little endian syntaxes; what it
    does not know (None) takes that path."""
    from pydicom.dataelem import DataElement

    from dicomd.dicom.parser import parse_file
    from dicomd.dimse.direct_find import encode_answer, encode_answer_json
    from dicomd.dimse.query import Translation, answer

    # values as a hostile or sloppy file may leave them: padded UIDs (pydicom's UID strips them), non-ASCII
    # in an ASCII VR, a person name with every group, several values
    odd = {
        "00081155": {"vr": "UI", "Value": [" 1.2.3 ", "1.2.4"]},
        "00080060": {"vr": "CS", "Value": ["CT\u00e9"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B", "Ideographic": "", "Phonetic": "C"}, {}]},
        "00081030": {"vr": "LO", "Value": ["x", "", "\u00fc"]},
    }
    absent = [
        DataElement(0x00321060, "LO", None),  # Requested Procedure Description
        DataElement(0x00280106, "US or SS", None),  # Smallest Image Pixel Value
        DataElement(0x00081110, "SQ", []),  # Referenced Study Sequence
    ]
    fast = 0
    matches = [odd]
    for path in sorted([*TEST_FILES.iterdir(), *CHARSET_FILES.iterdir()]):
        with contextlib.suppress(Exception):  # (not a file our parser stores)
            matches.append(parse_file(path).dataset)
    for found in matches:
        keys = [
            DataElement(int(tag, 16), value.get("vr", "UN"), None)
            for tag, value in found.items()
            if not tag.startswith("0002") and tag != "00080005"
        ]
        for chosen in [*([key] for key in [*keys, *absent]), keys, [*keys, *absent[:2]]]:
            translation = Translation(return_keys=chosen)
            for implicit in (True, False):
                mine = encode_answer_json(found, translation, "STUDY", "DICOMD", implicit=implicit)
                if mine is None:
                    continue
                identifier = answer(found, translation, "STUDY", "DICOMD")
                reference = encode_answer(identifier, implicit) or encode(identifier, implicit, True)
                assert mine == reference, ([k.tag for k in chosen], implicit)
                fast += 1
    assert fast > 2000


@pytest.fixture(scope="module")
def stalling_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    """300 studies behind a listener with a 1 s timeout and small send buffers: a peer that stops reading
    blocks its writes within a few dozen responses."""
    data_dir = tmp_path_factory.mktemp("stalled-find") / "data"
    with direct_listener(data_dir, timeout=1, send_buffer=8192) as served:
        studies = [
            make_instance(patient_id="DF-STALL", study=new_uid(), StudyDescription="x" * 60)
            for _ in range(300)
        ]
        _store(served.port, studies)
        yield served


def _statuses(stream: bytes) -> list[int]:
    """The status of each whole C-FIND-RSP command in a stream of P-DATA-TF PDUs (a cut last PDU ignored)."""
    statuses, position = [], 0
    while position + PDU_HEADER.size <= len(stream):
        pdu_type, _, length = PDU_HEADER.unpack_from(stream, position)
        end = position + PDU_HEADER.size + length
        if end > len(stream):
            break
        for _, control, value in pdv_items(stream[position:end]) if pdu_type == P_DATA_TF else ():
            if control == COMMAND | LAST:  # (each response's command set fits one PDV here)
                fields = decode_command(value)
                assert fields is not None
                statuses.append(us(fields.get(STATUS)) or 0)
        position = end
    return statuses


def test_a_peer_that_stops_reading_is_disconnected_at_the_first_timed_out_write(
    stalling_archive: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct path writes in the association's DUL thread, whose state machine learns of a failed
    write only when that thread is free again: it used to time out once per remaining match (hours for a
    large answer at the default timeout), then send a final Success after the matches lost meanwhile."""
    create = transport.AssociationSocket._create_socket

    def small_receive_buffer(self: Any, address: tuple[str, int] = ("", 0)) -> socket.socket:
        sock = create(self, address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    monkeypatch.setattr(transport.AssociationSocket, "_create_socket", small_receive_buffer)
    assoc = _associate(stalling_archive.port, STUDY_ROOT, EXPLICIT)
    raw = assoc.dul.socket.socket
    try:
        assoc.dul._is_transport_event = lambda: False  # this peer reads nothing more
        identifier = query("STUDY", PatientID="DF-STALL", StudyInstanceUID="", StudyDescription="")
        for pdu in message_pdus(
            _request(identifier, STUDY_ROOT, False, 1), assoc.accepted_contexts[0].context_id, MAX_PDU
        ):
            raw.sendall(pdu)
        time.sleep(4)  # the listener's writes block, then time out (1 s)
        raw.settimeout(10)
        stream, closed = bytearray(), False
        with contextlib.suppress(OSError):
            while chunk := raw.recv(65536):
                stream += chunk
            closed = True
    finally:
        del assoc.dul._is_transport_event  # it reads again: sees the connection closed, or aborts it
        assoc.abort()
    statuses = _statuses(bytes(stream))
    assert closed, "the listener kept the connection open"
    assert statuses and set(statuses) == {0xFF00}, "a final status after lost matches"
    assert len(statuses) < 300
    # the listener goes on serving, the whole answer to a peer that reads
    assert _statuses_on_a_fresh_association(stalling_archive, "DF-STALL") == [0xFF00] * 300 + [0x0000]


def test_no_direct_answer_while_pynetdicom_sends_or_serves() -> None:
    """A response written by the direct path between the fragments of a message pynetdicom sends, or while
    it serves a request of the same association, would break the stream (a peer overlapping requests)."""
    from queue import Queue
    from types import SimpleNamespace

    from dicomd.dimse.direct import DirectPath

    def state(*, sending: bool = False, queued: bool = False, serving: bool = False) -> bool:
        to_send: Queue[object] = Queue()
        messages: Queue[object] = Queue()
        if sending:
            to_send.put(object())
        if queued:
            messages.put(object())
        dul = SimpleNamespace(
            state_machine=SimpleNamespace(current_state="Sta6"),
            event_queue=Queue(),
            _recv_pdu=Queue(),
            to_provider_queue=to_send,
        )
        assoc = SimpleNamespace(
            dimse=SimpleNamespace(message=None, msg_queue=messages), serving=serving, _sent_release=False
        )
        path = DirectPath.__new__(DirectPath)
        path.assoc = assoc  # type: ignore[assignment]
        return path._may_start(dul)  # type: ignore[arg-type]

    assert state()
    assert not state(sending=True) and not state(queued=True) and not state(serving=True)
