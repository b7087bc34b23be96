"""The direct C-MOVE and C-GET paths (dicomd/dimse/direct_retrieve.py): their response codec against
pynetdicom's encoding (the reference); against a listener process that counts what its direct path takes,
the responses they send, and the instances they send, are those of pynetdicom's services for the same
request (a request whose command set comes in fragments goes there): retrieves in the stored syntaxes,
with conversions, with some or all sub-operations failed, of nothing, moves to an unknown or unreachable
destination, identifiers it cannot process; a C-CANCEL stops the sub-operations and the association goes
on; the Move Originator of each sub-operation is the AE that asked for the move; a requestor that aborts
mid-retrieve leaves the listener serving; every direct retrieve is audited. Selection and conversion are
tests/dimse/test_dimse_retrieve.py's (the same retrieve.select and load_for_sending behind both paths)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import build_context, build_role, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_ECHO_RQ, C_GET_RQ, C_GET_RSP, C_MOVE_RQ, C_MOVE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_GET, C_MOVE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from test_dimse_query_archive import Receiver, query, start_receiver
from test_dimse_retrieve import restudied, undecodable

from dicomd.dimse import direct_retrieve
from dicomd.dimse.direct_retrieve import REMAINING, DirectGet, DirectMove, _Final, encode_retrieve_response
from dicomd.dimse.direct_send import ONE_WRITE
from dicomd.dimse.retrieve import Selection

from support.dicom_files import EXPLICIT, make_instance, new_uid
from support.dicomweb import wait_for
from support.dimse import DICOMD_AE, TEST_AE, client_ae, echo, message_pdus, paused_reactor, store_files
from support.direct_listener import Listener, direct_listener
from support.server import free_port

# a data set received in another encoding than its context's is an error here, not pydicom's warning
pytestmark = [
    pytest.mark.filterwarnings("error:Expected implicit VR"),
    pytest.mark.filterwarnings("error:Expected explicit VR"),
]
STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove
STUDY_GET = StudyRootQueryRetrieveInformationModelGet
PATIENT_MOVE = PatientRootQueryRetrieveInformationModelMove
IMPLICIT = str(ImplicitVRLittleEndian)
MAX_PDU = 16384
COUNTS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


# ---- the codec, against pynetdicom's ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "comment", "counts", "with_identifier"),
    [
        (0xFF00, None, (3, 1, 0, 0), False),
        (0x0000, None, (0, 4, 0, 0), False),
        (0x0000, None, (None, 0, 0, 0), False),  # a move of nothing: no remaining count
        (0xB000, None, (0, 3, 1, 0), True),
        (0xFE00, None, (2, 1, 0, 1), True),
        (0xA801, None, None, False),
        (0xC000, "StudyInstanceUID is required at the STUDY level", (None, 0, 1, 0), True),
    ],
)
@pytest.mark.parametrize("operation", ["C-MOVE", "C-GET"])
def test_a_response_is_what_pynetdicom_encodes(
    status: int,
    comment: str | None,
    counts: tuple[int | None, int, int, int] | None,
    with_identifier: bool,
    operation: str,
) -> None:
    primitive, message_class, field_value = {
        "C-MOVE": (C_MOVE, C_MOVE_RSP, 0x8021),
        "C-GET": (C_GET, C_GET_RSP, 0x8010),
    }[operation]
    response = primitive()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = STUDY_MOVE
    response.Status = status
    if comment is not None:
        response.ErrorComment = comment
    elements: list[tuple[int, int]] = []
    if counts is not None:
        for number, (keyword, value) in enumerate(zip(COUNTS, counts, strict=True)):
            if value is not None:
                setattr(response, keyword, value)
                elements.append((REMAINING + number, value))
    if with_identifier:
        response.Identifier = io.BytesIO(b"\x08\x00\x58\x00\x00\x00\x00\x00")
    message = message_class()
    message.primitive_to_message(response)
    reference = message.encode_msg(1, MAX_PDU)
    command = next(reference).presentation_data_value_list[0][1][1:]  # (the PDV's control header dropped)
    ours = encode_retrieve_response(
        field_value, str(STUDY_MOVE), 7, status, comment, elements, data=with_identifier
    )
    assert ours == command


# ---- against a listener process -----------------------------------------------------------------------


@dataclass
class Archive:
    listener: Listener
    receivers: dict[str, Receiver]
    study: str = field(default_factory=new_uid)  # CT explicit x2, MR implicit, MR RLE
    rle_study: str = field(default_factory=new_uid)  # one RLE MR whose pixel data do not decode
    sops: list[str] = field(default_factory=list)


def _store(port: int, files: list[bytes], directory: Path) -> None:
    """C-STORE each file in its own syntax (support.dimse.store_files, from files in ``directory``)."""
    directory.mkdir(parents=True)
    paths = [directory / f"{n}.dcm" for n in range(len(files))]
    for path, data in zip(paths, files, strict=True):
        path.write_bytes(data)
    assert store_files(port, paths) == [0x0000] * len(files)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    receivers = {
        "STORESCP": start_receiver("STORESCP"),
        "IMPLICIT": start_receiver("IMPLICIT", [IMPLICIT]),
        "SLOW": start_receiver("SLOW", delay=0.3),
        "ABORTER": start_receiver("ABORTER", abort_at=2),
    }
    peers = [f"{title}=127.0.0.1:{receiver.port}" for title, receiver in receivers.items()]
    peers.append(f"NOBODY=127.0.0.1:{free_port()}")
    data_dir = tmp_path_factory.mktemp("direct-move") / "data"
    try:
        with direct_listener(data_dir, peers=",".join(peers), timeout=10) as served:
            archive = Archive(served, receivers)
            pid = "DM-P"
            ct_series = new_uid()
            files = [
                make_instance(study=archive.study, series=ct_series, patient_id=pid),
                make_instance(study=archive.study, series=ct_series, patient_id=pid),
                restudied("MR_small_implicit.dcm", pid, archive.study),
                restudied("MR_small_RLE.dcm", pid, archive.study),
                undecodable(restudied("MR_small_RLE.dcm", pid, archive.rle_study)),
            ]
            archive.sops = [str(pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID) for f in files]
            _store(served.port, files, data_dir.parent / "sent")
            yield archive
    finally:
        for receiver in receivers.values():
            receiver.close()


@pytest.fixture(autouse=True)
def empty_receivers(archive: Archive) -> None:
    for receiver in archive.receivers.values():
        with receiver.lock:
            receiver.received.clear()
            receiver.originators.clear()


def _associate(port: int, model: str = STUDY_MOVE, syntax: str = EXPLICIT, ae_title: str = TEST_AE) -> Any:
    ae = client_ae(ae_title)
    assoc = ae.associate("127.0.0.1", port, ae_title=DICOMD_AE, contexts=[build_context(model, syntax)])
    assert assoc.is_established
    return assoc


def _request(identifier: Dataset, destination: str, model: str, implicit: bool, message_id: int) -> C_MOVE_RQ:
    request = C_MOVE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = model
    request.Priority = 2
    request.MoveDestination = destination
    request.Identifier = io.BytesIO(encode(identifier, implicit, True))
    message = C_MOVE_RQ()
    message.primitive_to_message(request)
    return message


Response = tuple[int, str, tuple[int | None, ...], bytes | None]


def _responses(assoc: Any, pdus: list[bytes]) -> list[Response]:
    """Send a request's raw PDUs; every response as (status, error comment, counts, identifier bytes)."""
    out: list[Response] = []
    with paused_reactor(assoc):
        for pdu in pdus:
            assoc.dul.socket.send(pdu)
        while True:
            _, response = assoc.dimse.get_msg(block=True)
            assert response is not None, "no response"
            data = response.Identifier.getvalue() if response.Identifier is not None else None
            counts = tuple(getattr(response, keyword) for keyword in COUNTS)
            out.append((int(response.Status), str(response.ErrorComment or ""), counts, data or None))
            if int(response.Status) != 0xFF00:
                return out


def _failed_list(response: Response, implicit: bool) -> list[str]:
    identifier = response[3]
    assert identifier is not None
    value = pydicom.filereader.read_dataset(io.BytesIO(identifier), implicit, True).FailedSOPInstanceUIDList
    return [value] if isinstance(value, str) else list(value or [])


def _moves(archive: Archive) -> list[tuple[str, Dataset]]:
    """(destination, identifier) of each move compared."""
    study, rle_study = archive.study, archive.rle_study
    return [
        ("STORESCP", query("STUDY", StudyInstanceUID=study)),  # all as stored
        ("IMPLICIT", query("STUDY", StudyInstanceUID=study)),  # converted (the RLE one transcoded)
        ("IMPLICIT", query("STUDY", StudyInstanceUID=rle_study)),  # 0xA702: the one cannot be converted
        ("IMPLICIT", query("STUDY", StudyInstanceUID=[study, rle_study])),  # 0xB000: one of five failed
        ("STORESCP", query("STUDY", StudyInstanceUID=new_uid())),  # nothing to move
        ("STRANGER", query("STUDY", StudyInstanceUID=study)),  # not a configured peer: 0xA801
        ("NOBODY", query("STUDY", StudyInstanceUID=study)),  # a peer that does not answer: 0xA801
        ("STORESCP", query("FOO", StudyInstanceUID=study)),  # 0xA900
        ("STORESCP", query("STUDY", StudyInstanceUID="1.2.x")),  # 0xC000
    ]


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
def test_the_direct_path_answers_as_pynetdicom_does(archive: Archive, syntax: str) -> None:
    implicit = syntax == IMPLICIT
    port = archive.listener.port
    outcomes: list[list[Response]] = []
    for n, (destination, identifier) in enumerate(_moves(archive)):
        assoc = _associate(port, STUDY_MOVE, syntax)
        try:
            context_id = assoc.accepted_contexts[0].context_id
            taken = archive.listener.taken
            request = _request(identifier, destination, STUDY_MOVE, implicit, 1)
            direct = _responses(assoc, message_pdus(request, context_id, MAX_PDU))
            assert archive.listener.taken == taken + 1
            # a command set in fragments is pynetdicom's to answer
            request = _request(identifier, destination, STUDY_MOVE, implicit, 2)
            reference = _responses(assoc, message_pdus(request, context_id, 40))
            assert archive.listener.taken == taken + 1
        finally:
            assoc.release()
        assert direct == reference, f"move {n}"
        outcomes.append(direct)
    stored_all, converted, none_converted, some_failed, nothing, stranger, nobody, level, uid = outcomes
    assert [r[:3] for r in stored_all] == [
        (0xFF00, "", (3, 1, 0, 0)),
        (0xFF00, "", (2, 2, 0, 0)),
        (0xFF00, "", (1, 3, 0, 0)),
        (0xFF00, "", (0, 4, 0, 0)),
        (0x0000, "", (0, 4, 0, 0)),
    ]
    assert converted[-1][:3] == (0x0000, "", (0, 4, 0, 0))
    assert none_converted[-1][:3] == (0xA702, "", (0, 0, 1, 0))
    assert _failed_list(none_converted[-1], implicit) == [archive.sops[4]]
    assert some_failed[-1][:3] == (0xB000, "", (0, 4, 1, 0))
    assert _failed_list(some_failed[-1], implicit) == [archive.sops[4]]
    assert nothing == [(0x0000, "", (None, 0, 0, 0), None)]
    assert stranger == [(0xA801, "", (None,) * 4, None)] == nobody
    assert level[0][:2] == (0xA900, "QueryRetrieveLevel FOO is not a level of this model")
    assert uid[0][0] == 0xC000 and "not a UID" in uid[0][1]
    # each move reached its destination twice (the direct path's, pynetdicom's): as stored, or converted
    received = archive.receivers["STORESCP"].received
    assert sorted(str(ds.SOPInstanceUID) for _, ds in received) == sorted(archive.sops[:4] * 2)
    assert {ts for ts, ds in received if str(ds.SOPInstanceUID) == archive.sops[2]} == {IMPLICIT}
    assert {ts for ts, _ in archive.receivers["IMPLICIT"].received} == {IMPLICIT}
    # both name the AE that asked for the move as each sub-operation's Move Originator
    assert set(archive.receivers["STORESCP"].originators) == {TEST_AE}
    assert set(archive.receivers["IMPLICIT"].originators) == {TEST_AE}


def _move_statuses(port: int, study: str, destination: str, ae_title: str = TEST_AE) -> list[int]:
    """The statuses of a study's move on a new association."""
    assoc = _associate(port, ae_title=ae_title)
    try:
        identifier = query("STUDY", StudyInstanceUID=study)
        return [int(s.Status) for s, _ in assoc.send_c_move(identifier, destination, STUDY_MOVE)]
    finally:
        assoc.release()


def test_the_move_originator_is_the_ae_that_asked(archive: Archive) -> None:
    statuses = _move_statuses(archive.listener.port, archive.study, "STORESCP", ae_title="MOVER")
    assert statuses == [0xFF00] * 4 + [0x0000]
    assert archive.receivers["STORESCP"].originators == ["MOVER"] * 4


def test_a_c_cancel_stops_the_move_and_the_association_goes_on(archive: Archive) -> None:
    assoc = _associate(archive.listener.port, PATIENT_MOVE)
    statuses: list[int] = []
    final: Dataset | None = None
    try:
        taken = archive.listener.taken
        identifier = query("PATIENT", PatientID="DM-P")
        for status, _ in assoc.send_c_move(identifier, "SLOW", PATIENT_MOVE):
            assert status is not None and "Status" in status
            statuses.append(int(status.Status))
            if len(statuses) == 1:
                assoc.send_c_cancel(1, None, query_model=PATIENT_MOVE)
            final = status
        assert final is not None and final.Status == 0xFE00
        remaining, completed = (
            int(final.NumberOfRemainingSuboperations),
            int(final.NumberOfCompletedSuboperations),
        )
        assert remaining > 0 and completed + remaining + int(final.NumberOfFailedSuboperations) == 5
        assert archive.listener.taken == taken + 1
        assert len(archive.receivers["SLOW"].received) == completed
        # the next request on the same association is carried out in full
        after = [
            int(s.Status)
            for s, _ in assoc.send_c_move(
                query("STUDY", StudyInstanceUID=archive.study), "STORESCP", PATIENT_MOVE
            )
        ]
        assert after == [0xFF00] * 4 + [0x0000]
    finally:
        assoc.release()


def test_a_requestor_that_aborts_mid_move_leaves_the_listener_serving(archive: Archive) -> None:
    assoc = _associate(archive.listener.port)
    responses = assoc.send_c_move(query("STUDY", StudyInstanceUID=archive.study), "SLOW", STUDY_MOVE)
    status, _ = next(responses)
    assert status.Status == 0xFF00
    assoc.abort()
    assert wait_for(lambda: not assoc.is_alive(), timeout=10)
    assert echo(archive.listener.port) == 0x0000
    slow = archive.receivers["SLOW"]
    assert wait_for(lambda: len(slow.received) >= 1, timeout=10)
    time.sleep(4 * 0.3)  # (the rest would have come by now, one per 0.3 s)
    # no more sub-operations once the abort is seen (at most the one under way when it came)
    assert len(slow.received) <= 2
    assert _move_statuses(archive.listener.port, archive.study, "STORESCP") == [0xFF00] * 4 + [0x0000]


def test_a_destination_that_aborts_mid_move_fails_the_rest_at_once(archive: Archive) -> None:
    """The sub-operation waiting when the destination aborted fails, and the ones after it fail unsent:
    no pending response each (PS3.4 C.4.2.3.1: pending responses are optional), a final Warning with
    every failed instance listed; the listener goes on serving."""
    assoc = _associate(archive.listener.port)
    try:
        identifier = query("STUDY", StudyInstanceUID=archive.study)
        responses = list(assoc.send_c_move(identifier, "ABORTER", STUDY_MOVE))
    finally:
        assoc.release()
    statuses = [int(status.Status) for status, _ in responses]
    assert statuses == [0xFF00, 0xFF00, 0xB000]
    final, failed = responses[-1]
    assert (int(final.NumberOfCompletedSuboperations), int(final.NumberOfFailedSuboperations)) == (1, 3)
    received = archive.receivers["ABORTER"].sop_uids()
    assert len(received) == 2
    listed = failed.FailedSOPInstanceUIDList
    assert sorted(listed) == sorted(set(archive.sops[:4]) - {received[0]})
    assert _move_statuses(archive.listener.port, archive.study, "STORESCP") == [0xFF00] * 4 + [0x0000]


def test_an_association_has_ended_as_soon_as_its_dul_knows() -> None:
    """association_ended, which stops a move's sub-operations: a failed write (EventDrivenDUL.write's flag)
    counts before the association's own thread has noticed anything, and so does an abort."""
    receiver = start_receiver("ENDS")
    try:
        ae = client_ae()
        assoc = ae.associate(
            "127.0.0.1", receiver.port, ae_title="ENDS", contexts=[build_context(CTImageStorage)]
        )
        assert assoc.is_established and not direct_retrieve.association_ended(assoc)
        assoc.dul.write_failed = True  # as a write that failed leaves it
        assert assoc.is_established and direct_retrieve.association_ended(assoc)
        assoc.dul.write_failed = False
        assoc.abort()
        assert direct_retrieve.association_ended(assoc)
    finally:
        receiver.close()


A_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def test_a_release_request_mid_move_lets_the_move_finish_first(archive: Archive) -> None:
    """As pynetdicom's service does (PS3.8 state Sta8 may still send P-DATA): every sub-operation and the
    final response go before the A-RELEASE-RP."""
    assoc = _associate(archive.listener.port)
    try:
        context_id = assoc.accepted_contexts[0].context_id
        request = _request(query("STUDY", StudyInstanceUID=archive.study), "SLOW", STUDY_MOVE, False, 1)
        responses = _responses(assoc, [*message_pdus(request, context_id, MAX_PDU), A_RELEASE_RQ])
    finally:
        assoc.abort()  # (this side's state machine never sent the release it gets a response to)
    assert [status for status, *_ in responses] == [0xFF00] * 4 + [0x0000]
    assert len(archive.receivers["SLOW"].received) == 4
    assert echo(archive.listener.port) == 0x0000


def test_a_requestor_that_sends_other_requests_mid_move_is_aborted(archive: Archive) -> None:
    """Without an asynchronous operations window a peer may send only a C-CANCEL while its request is
    answered: the PDUs it sends meanwhile wait for pynetdicom, so past a bound the association is aborted
    instead of keeping them all."""
    assoc = _associate(archive.listener.port)
    context_id = assoc.accepted_contexts[0].context_id
    request = _request(query("STUDY", StudyInstanceUID=archive.study), "SLOW", STUDY_MOVE, False, 1)
    echo_request = C_ECHO_RQ()
    echo_request.primitive_to_message(_echo_primitive())
    flood = message_pdus(echo_request, context_id, MAX_PDU) * 40
    with paused_reactor(assoc):
        for pdu in [*message_pdus(request, context_id, MAX_PDU), *flood]:
            assoc.dul.socket.send(pdu)
    assert wait_for(lambda: assoc.is_aborted, timeout=10)
    time.sleep(4 * 0.3)
    assert len(archive.receivers["SLOW"].received) <= 2  # the move stopped with the association
    assert echo(archive.listener.port) == 0x0000


def _echo_primitive() -> C_ECHO:
    primitive = C_ECHO()
    primitive.MessageID = 9
    primitive.AffectedSOPClassUID = "1.2.840.10008.1.1"
    return primitive


def test_an_audit_event_per_direct_c_move(archive: Archive) -> None:
    before = _audit_moves(archive.listener.data_dir)
    assoc = _associate(archive.listener.port)
    try:
        identifier = query("STUDY", StudyInstanceUID=[archive.study, archive.rle_study])
        statuses = [int(s.Status) for s, _ in assoc.send_c_move(identifier, "IMPLICIT", STUDY_MOVE)]
    finally:
        assoc.release()
    assert statuses[-1] == 0xB000
    # (an earlier test's last event may land after ``before``: the event is written after the response)
    assert wait_for(
        lambda: any(e["status"] == 0xB000 for e in _audit_moves(archive.listener.data_dir)[len(before) :])
    )
    [event] = [e for e in _audit_moves(archive.listener.data_dir)[len(before) :] if e["status"] == 0xB000]
    assert event["status"] == 0xB000 and event["sop_class"] == str(STUDY_MOVE)
    assert event["sub_operations"] == {"completed": 4, "failed": 1, "warning": 0}
    assert event["query"]["QueryRetrieveLevel"] == "STUDY"


def _audit_moves(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [e for e in map(orjson.loads, path.read_bytes().splitlines()) if e.get("method") == "C-MOVE"]


# ---- C-GET ------------------------------------------------------------------------------------------------


@dataclass
class Got:
    statuses: list[int] = field(default_factory=list)
    final: Dataset = field(default_factory=Dataset)
    failed_uids: list[str] = field(default_factory=list)
    received: list[tuple[str, str, bytes]] = field(default_factory=list)  # (SOP Instance UID, syntax, pixels)

    def counts(self) -> tuple[int | None, ...]:
        return tuple(self.final.get(keyword) for keyword in COUNTS)


GET_CLASSES = [CTImageStorage, MRImageStorage]


def _getter(port: int, syntaxes: list[str], delay: float = 0.0) -> tuple[Any, Got]:
    """An association proposing C-GET and the storage contexts of ``syntaxes`` (one each) with the SCP role,
    storing what it receives in a Got."""
    got = Got()

    def on_store(event: Any) -> int:
        if delay:
            time.sleep(delay)
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.received.append((str(ds.SOPInstanceUID), str(event.context.transfer_syntax), bytes(ds.PixelData)))
        return 0x0000

    ae = client_ae()
    ae.add_requested_context(STUDY_GET)
    for sop in GET_CLASSES:
        for ts in syntaxes:
            ae.add_requested_context(sop, [ts])
    roles = [build_role(sop, scp_role=True) for sop in GET_CLASSES]
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=DICOMD_AE, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert assoc.is_established
    return assoc, got


def _get(assoc: Any, got: Got, identifier: Dataset, *, cancel: bool = False) -> Got:
    for status, listed in assoc.send_c_get(identifier, STUDY_GET):
        assert status is not None and "Status" in status, "no response"
        got.statuses.append(int(status.Status))
        if int(status.Status) == 0xFF00:
            if cancel and len(got.statuses) == 1:
                assoc.send_c_cancel(1, None, query_model=STUDY_GET)
            continue
        got.final = status
        if listed is not None and "FailedSOPInstanceUIDList" in listed:
            value = listed.FailedSOPInstanceUIDList
            got.failed_uids = [value] if isinstance(value, str) else list(value)
    return got


def _get_both_ways(
    archive: Archive, identifier: Dataset, syntaxes: list[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Got, Got]:
    """The same C-GET through the direct path and through pynetdicom's service (the request's command set
    in fragments: this side's DIMSE provider writes PDUs of at most 40 bytes)."""
    results = []
    for fragmented in (False, True):
        assoc, got = _getter(archive.listener.port, syntaxes)
        try:
            taken = archive.listener.taken
            with monkeypatch.context() as patched:
                if fragmented:
                    patched.setattr(DIMSEServiceProvider, "maximum_pdu_size", property(lambda _: 40))
                results.append(_get(assoc, got, identifier))
            assert archive.listener.taken == taken + (0 if fragmented else 1)
        finally:
            assoc.release()
    direct, reference = results
    return direct, reference


RLE = "1.2.840.10008.1.2.5"
ALL_SYNTAXES = [EXPLICIT, IMPLICIT, RLE]


@pytest.mark.parametrize(
    ("which", "syntaxes", "expected"),
    [
        ("study", ALL_SYNTAXES, (0x0000, (0, 4, 0, 0))),  # all as stored
        ("study", [IMPLICIT], (0x0000, (0, 4, 0, 0))),  # converted (the RLE one transcoded)
        ("rle_study", [IMPLICIT], (0xA702, (0, 0, 1, 0))),  # the one cannot be converted
        ("both", [IMPLICIT], (0xB000, (0, 4, 1, 0))),
        ("nothing", ALL_SYNTAXES, (0x0000, (None, 0, 0, 0))),
        ("bad level", ALL_SYNTAXES, (0xA900, (None, 0, 1, 0))),
        ("bad uid", ALL_SYNTAXES, (0xC000, (None, 0, 1, 0))),
    ],
)
def test_the_direct_c_get_answers_and_sends_as_pynetdicom_does(
    archive: Archive,
    which: str,
    syntaxes: list[str],
    expected: tuple[int, tuple[int | None, ...]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identifier = {
        "study": query("STUDY", StudyInstanceUID=archive.study),
        "rle_study": query("STUDY", StudyInstanceUID=archive.rle_study),
        "both": query("STUDY", StudyInstanceUID=[archive.study, archive.rle_study]),
        "nothing": query("STUDY", StudyInstanceUID=new_uid()),
        "bad level": query("FOO", StudyInstanceUID=archive.study),
        "bad uid": query("STUDY", StudyInstanceUID="1.2.x"),
    }[which]
    direct, reference = _get_both_ways(archive, identifier, syntaxes, monkeypatch)
    assert (direct.statuses, direct.counts(), direct.failed_uids) == (
        reference.statuses,
        reference.counts(),
        reference.failed_uids,
    )
    assert str(direct.final.get("ErrorComment", "")) == str(reference.final.get("ErrorComment", ""))
    assert sorted(direct.received) == sorted(reference.received)
    assert (int(direct.final.Status), direct.counts()) == expected
    if which in ("rle_study", "both"):
        assert direct.failed_uids == [archive.sops[4]]
    sent = {uid: ts for uid, ts, _ in direct.received}
    if which == "study" and syntaxes == ALL_SYNTAXES:
        as_stored = [EXPLICIT, EXPLICIT, IMPLICIT, RLE]
        assert sent == dict(zip(archive.sops[:4], as_stored, strict=True))
    elif which in ("study", "both"):
        assert sent == dict.fromkeys(archive.sops[:4], IMPLICIT)


def test_a_large_and_a_small_instance_are_got_as_stored(archive: Archive, tmp_path: Path) -> None:
    """A data set above one write's size goes a PDU at a time, within the requestor's maximum PDU length."""
    study = new_uid()
    large = make_instance(study=study, rows=512, columns=512)  # 512 KiB of pixel data
    small = make_instance(study=study)
    assert len(large) > ONE_WRITE > len(small)
    _store(archive.listener.port, [large, small], tmp_path / "sent")
    assoc, got = _getter(archive.listener.port, ALL_SYNTAXES)
    try:
        assert _get(assoc, got, query("STUDY", StudyInstanceUID=study)).statuses == [0xFF00] * 2 + [0]
    finally:
        assoc.release()
    for original in (large, small):
        stored = pydicom.dcmread(io.BytesIO(original))
        assert (str(stored.SOPInstanceUID), EXPLICIT, bytes(stored.PixelData)) in got.received


def test_a_c_cancel_stops_the_get_and_the_association_goes_on(archive: Archive) -> None:
    assoc, got = _getter(archive.listener.port, ALL_SYNTAXES, delay=0.3)
    try:
        taken = archive.listener.taken
        _get(assoc, got, query("STUDY", StudyInstanceUID=archive.study), cancel=True)
        final = got.final
        assert final.Status == 0xFE00
        remaining = int(final.NumberOfRemainingSuboperations)
        completed = int(final.NumberOfCompletedSuboperations)
        assert remaining > 0 and completed + remaining == 4
        assert len(got.received) == completed
        assert archive.listener.taken == taken + 1
        again = _get(assoc, Got(), query("STUDY", StudyInstanceUID=archive.study))
        assert again.statuses == [0xFF00] * 4 + [0x0000]
    finally:
        assoc.release()


def test_a_requestor_that_aborts_mid_get_leaves_the_listener_serving(archive: Archive) -> None:
    assoc, _ = _getter(archive.listener.port, ALL_SYNTAXES, delay=0.3)
    responses = assoc.send_c_get(query("STUDY", StudyInstanceUID=archive.study), STUDY_GET)
    status, _ = next(responses)
    assert status.Status == 0xFF00
    assoc.abort()
    assert wait_for(lambda: not assoc.is_alive(), timeout=10)
    assert echo(archive.listener.port) == 0x0000
    fresh, got = _getter(archive.listener.port, ALL_SYNTAXES)
    try:
        assert _get(fresh, got, query("STUDY", StudyInstanceUID=archive.study)).statuses == [0xFF00] * 4 + [0]
    finally:
        fresh.release()


def test_an_audit_event_per_direct_c_get(archive: Archive) -> None:
    before = len(_audit_events(archive.listener.data_dir, "C-GET"))
    assoc, got = _getter(archive.listener.port, [IMPLICIT])
    try:
        _get(assoc, got, query("STUDY", StudyInstanceUID=[archive.study, archive.rle_study]))
    finally:
        assoc.release()
    assert got.final.Status == 0xB000

    def new_events() -> list[dict[str, Any]]:
        events = _audit_events(archive.listener.data_dir, "C-GET")[before:]
        return [e for e in events if e["status"] == 0xB000]

    assert wait_for(lambda: len(new_events()) == 1)
    [event] = new_events()
    assert event["sub_operations"] == {"completed": 4, "failed": 1, "warning": 0}
    assert event["sop_class"] == str(STUDY_GET)


def _audit_events(data_dir: Path, method: str) -> list[dict[str, Any]]:
    path = data_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [e for e in map(orjson.loads, path.read_bytes().splitlines()) if e.get("method") == method]


# ---- a retrieve that outlasts the network timeout ---------------------------------------------------------


def test_a_retrieve_longer_than_the_network_timeout_is_not_cut_short(tmp_path: Path) -> None:
    """The requestor is silent while its move runs: only the destination's own waits are bounded (the DIMSE
    timeout), not the whole move by the requestor's idle (network) timeout."""
    slow = start_receiver("SLOW", delay=0.4)
    try:
        peers = f"SLOW=127.0.0.1:{slow.port}"
        with direct_listener(tmp_path / "data", peers=peers, timeout=1) as served:
            study = new_uid()
            files = [make_instance(study=study) for _ in range(5)]  # 2 s at the destination
            _store(served.port, files, tmp_path / "sent")
            taken = served.taken
            assoc = _associate(served.port)
            try:
                identifier = query("STUDY", StudyInstanceUID=study)
                statuses = [int(s.Status) for s, _ in assoc.send_c_move(identifier, "SLOW", STUDY_MOVE)]
                # and the association goes on
                nothing = query("STUDY", StudyInstanceUID=new_uid())
                after = [s.get("Status") for s, _ in assoc.send_c_move(nothing, "SLOW", STUDY_MOVE)]
            finally:
                assoc.release()
            assert statuses == [0xFF00] * 5 + [0x0000]
            assert after == [0x0000]
            assert served.taken == taken + 2
    finally:
        slow.close()


def test_a_requestor_silent_past_the_network_timeout_mid_get_is_aborted(tmp_path: Path) -> None:
    """The C-GET's C-STORE sub-operation gets no response for the network timeout: the association is
    aborted with an A-ABORT PDU (as pynetdicom's own network timeout does), not just closed; the listener
    goes on serving."""
    with direct_listener(tmp_path / "data", timeout=1) as served:
        study = new_uid()
        _store(served.port, [make_instance(study=study)], tmp_path / "sent")
        assoc, _ = _getter(served.port, [EXPLICIT])
        pdus: list[str] = []
        assoc.bind(evt.EVT_PDU_RECV, lambda event: pdus.append(type(event.pdu).__name__))
        request = C_GET()
        request.MessageID = 1
        request.AffectedSOPClassUID = STUDY_GET
        request.Priority = 2
        request.Identifier = io.BytesIO(encode(query("STUDY", StudyInstanceUID=study), False, True))
        message = C_GET_RQ()
        message.primitive_to_message(request)
        context_id = assoc._get_valid_context(STUDY_GET, "", "scu").context_id
        with paused_reactor(assoc):  # (so that nothing answers the C-STORE-RQ)
            for pdu in message_pdus(message, context_id, MAX_PDU):
                assoc.dul.socket.send(pdu)
            assert wait_for(lambda: "A_ABORT_RQ" in pdus, timeout=10)
        assert pdus[0] == "P_DATA_TF"  # the C-STORE-RQ that got no answer
        assert wait_for(lambda: not assoc.is_alive(), timeout=10)
        assert echo(served.port) == 0x0000


# ---- more sub-operations than the counts can say --------------------------------------------------------


@pytest.mark.parametrize(("retrieve", "status"), [(DirectMove, 0xC516), (DirectGet, 0xC416)])
def test_more_than_65535_selected_instances_are_refused(
    retrieve: type[DirectMove | DirectGet], status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts of the responses are US: such a retrieve is refused before any sub-operation, with
    pynetdicom's status for it (the number of instances a test can store makes this a unit test)."""
    selected = [object()] * 65_536
    monkeypatch.setattr(direct_retrieve, "select", lambda *_: Selection(selected))  # type: ignore[arg-type]
    operation = retrieve(None, None, str(STUDY_MOVE), False)  # type: ignore[arg-type]
    final = operation._selected(lambda: Dataset())  # type: ignore[arg-type]
    assert final == _Final(status)
    monkeypatch.setattr(direct_retrieve, "select", lambda *_: Selection(selected[:65_535]))  # type: ignore[arg-type]
    assert operation._selected(lambda: Dataset()) == selected[:65_535]  # type: ignore[arg-type]
