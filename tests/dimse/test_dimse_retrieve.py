"""C-MOVE and C-GET SCP (dimse/retrieve.py) against a real index and object store, through pynetdicom
and DCMTK's movescu/getscu/storescp: retrieval at patient, study, series and image level, instances sent
in their stored syntax or converted to one the peer accepts (without pixel work between native little
endian syntaxes, transcoded by the pixel services from compressed ones; else failed and listed),
the sub-operation counts and final statuses, cancel, an unknown destination, identifiers this SCP cannot
process."""

from __future__ import annotations

import io
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from test_dimse_query_archive import (
    AE_TITLE,
    Receiver,
    Scp,
    part10,
    query,
    start_receiver,
    start_scp,
)

from dicomd.dimse import direct_send
from dicomd.dimse import retrieve as retrieve_module
from dicomd.dimse.reactor import EventDrivenAssociation
from dicomd.index.schema import DEFAULT_PARTITION_KEY

from support.backends import BACKENDS, backend_url
from support.dicom_files import TEST_FILES, make_instance, new_uid
from support.server import free_port

STUDY_MOVE = StudyRootQueryRetrieveInformationModelMove
PATIENT_MOVE = PatientRootQueryRetrieveInformationModelMove
STUDY_GET = StudyRootQueryRetrieveInformationModelGet
PATIENT_GET = PatientRootQueryRetrieveInformationModelGet
EXPLICIT, IMPLICIT = str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)
DEFLATED, RLE = str(DeflatedExplicitVRLittleEndian), str(RLELossless)


def restudied(
    name: str, patient_id: str, study: str, series: str | None = None, sop: str | None = None
) -> bytes:
    """A bundled file moved into a study (and series) of the test's, in its own transfer syntax."""
    ds = pydicom.dcmread(TEST_FILES / name)
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = patient_id, study, series or new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop or new_uid()
    return part10(ds)


def undecodable(data: bytes) -> bytes:
    """An RLE instance whose one fragment is not RLE (the header names 255 segments): stored as any other,
    sent as stored, but it cannot be transcoded."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PixelData = encapsulate([b"\xff" * 128])
    return part10(ds)


@dataclass
class Archive:
    scp: Scp
    receiver: Receiver  # "STORESCP": accepts every syntax
    implicit_only: Receiver  # "IMPLICIT": accepts implicit VR little endian only
    slow: Receiver  # "SLOW": takes 0.3 s per instance
    study: str = field(default_factory=new_uid)  # CT (explicit) x2, MR implicit, MR RLE, SC deflated
    ct_series: str = field(default_factory=new_uid)
    ct: list[str] = field(default_factory=lambda: [new_uid(), new_uid()])
    mr_implicit: str = field(default_factory=new_uid)
    mr_rle: str = field(default_factory=new_uid)
    deflated: str = field(default_factory=new_uid)
    rle_study: str = field(default_factory=new_uid)  # one RLE MR whose pixel data do not decode
    other_study: str = field(default_factory=new_uid)  # patient RET-P's second study: one CT
    other_ct: str = field(default_factory=new_uid)
    originals: dict[str, bytes] = field(default_factory=dict)

    def files(self) -> list[bytes]:
        pid = "RET-P"
        files = {
            self.ct[0]: make_instance(
                study=self.study, series=self.ct_series, sop=self.ct[0], patient_id=pid
            ),
            self.ct[1]: make_instance(
                study=self.study, series=self.ct_series, sop=self.ct[1], patient_id=pid
            ),
            self.mr_implicit: restudied("MR_small_implicit.dcm", pid, self.study, sop=self.mr_implicit),
            self.mr_rle: restudied("MR_small_RLE.dcm", pid, self.study, sop=self.mr_rle),
            self.deflated: restudied("image_dfl.dcm", pid, self.study, sop=self.deflated),
            new_uid(): undecodable(restudied("MR_small_RLE.dcm", "RET-RLE", self.rle_study)),
            self.other_ct: make_instance(study=self.other_study, sop=self.other_ct, patient_id=pid),
        }
        self.originals = files
        return list(files.values())

    @property
    def peers(self) -> dict[str, tuple[str, int]]:
        return {
            "STORESCP": ("127.0.0.1", self.receiver.port),
            "IMPLICIT": ("127.0.0.1", self.implicit_only.port),
            "SLOW": ("127.0.0.1", self.slow.port),
        }


@pytest.fixture(scope="module", params=BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """The archive on each index backend (SQLite; PostgreSQL when configured), and the C-MOVE receivers."""
    root = tmp_path_factory.mktemp("retrieve")
    with backend_url(request.param, root) as url:
        yield from _archive(root, url)


def _archive(root: Path, index_url: str) -> Iterator[Archive]:
    receivers = [
        start_receiver("STORESCP"),
        start_receiver("IMPLICIT", [IMPLICIT]),
        start_receiver("SLOW", delay=0.3),
    ]
    archive = Archive(Scp.__new__(Scp), *receivers)
    peers = archive.peers | {"DCMTK": ("127.0.0.1", free_port()), "NOBODY": ("127.0.0.1", free_port())}
    archive.scp = start_scp(root, peers, index_url=index_url)
    archive.scp.stow(archive.files())
    yield archive
    archive.scp.close()
    for receiver in receivers:
        receiver.close()


@pytest.fixture(autouse=True)
def empty_receivers(archive: Archive) -> None:
    for receiver in (archive.receiver, archive.implicit_only, archive.slow):
        with receiver.lock:
            receiver.received.clear()
            receiver.originators.clear()


@dataclass
class Retrieve:
    statuses: list[int] = field(default_factory=list)
    final: Dataset = field(default_factory=Dataset)
    failed_uids: list[str] = field(default_factory=list)

    @property
    def counts(self) -> tuple[int, int, int]:
        """(completed, failed, warning) of the final response."""
        f = self.final
        return (
            int(f.get("NumberOfCompletedSuboperations", 0) or 0),
            int(f.get("NumberOfFailedSuboperations", 0) or 0),
            int(f.get("NumberOfWarningSuboperations", 0) or 0),
        )


def _collect(responses: Any, assoc: Any, model: str, cancel_after_pending: bool) -> Retrieve:
    out = Retrieve()
    for status, identifier in responses:
        assert status is not None and "Status" in status, "no response (aborted or timed out)"
        out.statuses.append(int(status.Status))
        if int(status.Status) == 0xFF00:
            if cancel_after_pending and len(out.statuses) == 1:
                assoc.send_c_cancel(1, None, query_model=model)
            continue
        out.final = status
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            out.failed_uids = [value] if isinstance(value, str) else list(value)
    return out


def move(
    scp: Scp, identifier: Dataset, destination: str, model: str = STUDY_MOVE, *, cancel: bool = False
) -> Retrieve:
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return _collect(assoc.send_c_move(identifier, destination, model), assoc, model, cancel)
    finally:
        assoc.release()


def get(
    scp: Scp,
    identifier: Dataset,
    model: str = STUDY_GET,
    storage: list[str] | None = None,
    syntaxes: list[str] | None = None,
) -> tuple[Retrieve, list[tuple[str, Dataset]]]:
    """A C-GET through pynetdicom proposing `storage` SOP classes (all by default) with the SCP role."""
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(model)
    classes = storage or [CTImageStorage, MRImageStorage, "1.2.840.10008.5.1.4.1.1.7"]
    for sop in classes:
        for ts in syntaxes or [EXPLICIT, IMPLICIT, DEFLATED, RLE]:
            ae.add_requested_context(sop, [ts])  # one each: the acceptor chooses none for us
    received: list[tuple[str, Dataset]] = []

    def on_store(event: Any) -> int:
        received.append((str(event.context.transfer_syntax), event.dataset))
        return 0x0000

    roles = [build_role(sop, scp_role=True) for sop in classes]
    assoc = ae.associate(
        "127.0.0.1", scp.port, ae_title=AE_TITLE, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert assoc.is_established
    try:
        return _collect(assoc.send_c_get(identifier, model), assoc, model, False), received
    finally:
        assoc.release()


def _pixels(data: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)


# ---- C-MOVE ---------------------------------------------------------------------------------------


def test_move_a_study_in_its_stored_syntaxes(archive: Archive) -> None:
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "STORESCP")
    assert result.statuses == [0xFF00] * 5 + [0x0000]
    assert result.counts == (5, 0, 0)
    received = {str(ds.SOPInstanceUID): (ts, ds) for ts, ds in archive.receiver.received}
    expected = {archive.ct[0]: EXPLICIT, archive.ct[1]: EXPLICIT, archive.mr_implicit: IMPLICIT}
    expected |= {archive.mr_rle: RLE, archive.deflated: DEFLATED}
    assert {uid: ts for uid, (ts, _) in received.items()} == expected
    for uid in (archive.ct[0], archive.mr_implicit, archive.mr_rle):
        assert bytes(received[uid][1].PixelData) == _pixels(archive.originals[uid])
    assert received[archive.ct[0]][1].StudyInstanceUID == archive.study
    assert archive.receiver.originators == ["MOVESCU"] * 5  # the AE that asked (PS3.7 9.3.1.1)


def test_instances_sent_as_stored_take_the_direct_send(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dimse/direct_send.py sends a sub-operation whose instance goes as stored, or with its element
    headers rewritten; one that needs pixel work is pynetdicom's (the stored sender is not offered it)."""
    offered: list[tuple[str, bool]] = []

    def counting(assoc: Any, dataset: Any, *args: Any) -> Any:
        status = direct_send.send_stored(assoc, dataset, *args)
        offered.append((str(dataset.SOPInstanceUID), status is not None))
        return status

    monkeypatch.setattr(EventDrivenAssociation, "stored_sender", staticmethod(counting))
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "STORESCP")
    assert result.counts == (5, 0, 0)
    expected = {archive.ct[0], archive.ct[1], archive.mr_implicit, archive.mr_rle, archive.deflated}
    assert sorted(offered) == sorted((uid, True) for uid in expected)
    offered.clear()
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "IMPLICIT")
    assert result.counts[0] == 5
    # the explicit (and deflated) ones with their headers rewritten (dicom/vr_conversion.py); the RLE one
    # was transcoded by the pixel services and encoded by pynetdicom
    rewritten = {archive.ct[0], archive.ct[1], archive.deflated}
    assert sorted(offered) == sorted((uid, True) for uid in {archive.mr_implicit} | rewritten)


def test_move_converts_to_a_syntax_the_peer_accepts(archive: Archive) -> None:
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "IMPLICIT")
    assert (result.final.Status, result.counts) == (0x0000, (5, 0, 0))
    received = {str(ds.SOPInstanceUID): (ts, ds) for ts, ds in archive.implicit_only.received}
    assert set(received) == {
        archive.ct[0],
        archive.ct[1],
        archive.mr_implicit,
        archive.mr_rle,
        archive.deflated,
    }
    assert {ts for ts, _ in received.values()} == {IMPLICIT}
    assert bytes(received[archive.ct[1]][1].PixelData) == _pixels(archive.originals[archive.ct[1]])
    assert bytes(received[archive.deflated][1].PixelData) == _pixels(archive.originals[archive.deflated])
    # the RLE MR, decoded by the pixel services: the same pixels, now native
    original = pydicom.dcmread(io.BytesIO(archive.originals[archive.mr_rle]))
    sent = received[archive.mr_rle][1]
    sent.file_meta = pydicom.dataset.FileMetaDataset()
    sent.file_meta.TransferSyntaxUID = IMPLICIT
    assert (sent.pixel_array == original.pixel_array).all()
    assert (sent.StudyInstanceUID, sent.SOPClassUID) == (original.StudyInstanceUID, original.SOPClassUID)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",  # lossy: decoded as is, no further loss
    ],
)
def test_move_transcodes_for_a_peer_without_the_codec(archive: Archive, name: str) -> None:
    study = new_uid()
    data = restudied(name, "RET-CODEC", study)
    archive.scp.stow([data])
    result = move(archive.scp, query("STUDY", StudyInstanceUID=study), "IMPLICIT")
    assert (result.final.Status, result.counts) == (0x0000, (1, 0, 0))
    [(syntax, sent)] = archive.implicit_only.received
    assert syntax == IMPLICIT
    sent.file_meta = pydicom.dataset.FileMetaDataset()
    sent.file_meta.TransferSyntaxUID = IMPLICIT
    original = pydicom.dcmread(io.BytesIO(data))
    assert (sent.pixel_array == original.pixel_array).all()
    assert sent.SOPInstanceUID == original.SOPInstanceUID


def test_move_where_every_sub_operation_fails(archive: Archive) -> None:
    # the study's one instance is RLE whose pixel data do not decode: it cannot be converted
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.rle_study), "IMPLICIT")
    assert (result.final.Status, result.counts) == (0xA702, (0, 1, 0))
    assert archive.implicit_only.received == []


@pytest.mark.parametrize(
    ("level", "model", "keys", "expected"),
    [
        ("PATIENT", PATIENT_MOVE, {"PatientID": "RET-P"}, "study+other"),
        ("STUDY", PATIENT_MOVE, {"PatientID": "RET-P", "StudyInstanceUID": "other_study"}, "other"),
        ("STUDY", STUDY_MOVE, {"StudyInstanceUID": ["other_study", "rle_study"]}, "other+rle"),
        ("SERIES", STUDY_MOVE, {"StudyInstanceUID": "study", "SeriesInstanceUID": "ct_series"}, "ct"),
        ("SERIES", STUDY_MOVE, {"SeriesInstanceUID": "ct_series"}, "ct"),
        (
            "IMAGE",
            STUDY_MOVE,
            {"StudyInstanceUID": "study", "SeriesInstanceUID": "ct_series", "SOPInstanceUID": "ct1"},
            "ct1",
        ),
        ("IMAGE", PATIENT_MOVE, {"SOPInstanceUID": ["ct1", "mr_implicit", "other_ct"]}, "ct1+mr+other"),
    ],
)
def test_move_at_each_level(
    archive: Archive, level: str, model: str, keys: dict[str, Any], expected: str
) -> None:
    named = {
        "study": archive.study,
        "other_study": archive.other_study,
        "rle_study": archive.rle_study,
        "ct_series": archive.ct_series,
        "ct1": archive.ct[1],
        "mr_implicit": archive.mr_implicit,
        "other_ct": archive.other_ct,
    }
    sets = {
        "study": {archive.ct[0], archive.ct[1], archive.mr_implicit, archive.mr_rle, archive.deflated},
        "other": {archive.other_ct},
        "ct": set(archive.ct),
        "ct1": {archive.ct[1]},
        "mr": {archive.mr_implicit},
        "rle": {str(pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID) for d in archive.originals.values()}
        - {
            archive.ct[0],
            archive.ct[1],
            archive.mr_implicit,
            archive.mr_rle,
            archive.deflated,
            archive.other_ct,
        },
    }
    resolved = {
        k: ([named[x] for x in v] if isinstance(v, list) else named.get(v, v)) for k, v in keys.items()
    }
    result = move(archive.scp, query(level, **resolved), "STORESCP", model)
    wanted = set().union(*(sets[name] for name in expected.split("+")))
    assert (result.final.Status, result.counts) == (0x0000, (len(wanted), 0, 0))
    assert sorted(archive.receiver.sop_uids()) == sorted(wanted)


def test_move_of_nothing_is_success_without_sub_operations(archive: Archive) -> None:
    result = move(archive.scp, query("STUDY", StudyInstanceUID=new_uid()), "STORESCP")
    assert (result.statuses, result.counts) == ([0x0000], (0, 0, 0))


def test_move_to_an_unknown_ae_is_refused(archive: Archive) -> None:
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "STRANGER")
    assert result.statuses == [0xA801]
    assert archive.receiver.received == []


def test_move_to_a_peer_that_does_not_answer(archive: Archive) -> None:
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "NOBODY")
    assert result.statuses == [0xA801]


def test_cancel_a_move(archive: Archive) -> None:
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.study), "SLOW", cancel=True)
    assert result.final.Status == 0xFE00
    remaining = int(result.final.NumberOfRemainingSuboperations)
    completed = result.counts[0]
    assert remaining > 0 and completed + remaining == 5
    time.sleep(0.5)
    assert len(archive.slow.received) == completed


@pytest.mark.parametrize(
    ("keys", "status", "comment"),
    [
        ({"StudyInstanceUID": "1.2.3"}, 0xA900, "QueryRetrieveLevel is required"),
        ({"QueryRetrieveLevel": "STUDY"}, 0xC000, "StudyInstanceUID is required"),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.x"}, 0xC000, "not a UID"),
        (
            {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2.3"},
            0xC000,
            "SeriesInstanceUID is required",
        ),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, 0xC000, "no wildcards"),
        ({"QueryRetrieveLevel": "PATIENT", "PatientID": "X"}, 0xA900, "not a level"),
    ],
)
def test_move_identifiers_this_scp_cannot_process(
    archive: Archive, keys: dict[str, str], status: int, comment: str
) -> None:
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    result = move(archive.scp, identifier, "STORESCP")
    assert result.statuses == [status]
    assert comment in str(result.final.get("ErrorComment", ""))
    got, _ = get(archive.scp, identifier)
    assert got.statuses == [status]
    assert comment in str(got.final.get("ErrorComment", ""))


def test_the_store_association_sends_without_nagle_delay_and_times_out(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TCP_NODELAY, and the network timeout on its socket (pynetdicom leaves a requested association's
    without one: a destination that stopped reading held the move for good)."""
    seen: list[tuple[int, float | None, float | None]] = []
    real = retrieve_module._tune_socket

    def recording(event: Any) -> None:
        real(event)
        sock = event.assoc.dul.socket.socket
        nodelay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen.append((nodelay, sock.gettimeout(), event.assoc.network_timeout))

    monkeypatch.setattr(retrieve_module, "_tune_socket", recording)
    result = move(archive.scp, query("STUDY", StudyInstanceUID=archive.other_study), "STORESCP")
    assert result.counts == (1, 0, 0)
    assert seen and all(nodelay and timeout and timeout == network for nodelay, timeout, network in seen)


def test_an_object_gone_from_the_store_is_a_failed_sub_operation(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = archive.scp.store.read

    def read(key: str, *args: Any) -> bytes:
        if key == gone_key:
            raise FileNotFoundError(key)
        return real_read(key, *args)

    gone_key = archive.scp.index.find_instances(DEFAULT_PARTITION_KEY, archive.study, archive.ct_series)[
        0
    ].object_key
    monkeypatch.setattr(archive.scp.store, "read", read)
    result = move(archive.scp, query("SERIES", SeriesInstanceUID=archive.ct_series), "STORESCP")
    assert (result.final.Status, result.counts) == (0xB000, (1, 1, 0))
    assert len(result.failed_uids) == 1 and result.failed_uids[0] in archive.ct


# ---- C-GET ----------------------------------------------------------------------------------------


def test_get_a_study_on_the_requesting_association(archive: Archive) -> None:
    result, received = get(archive.scp, query("STUDY", StudyInstanceUID=archive.study))
    assert (result.final.Status, result.counts) == (0x0000, (5, 0, 0))
    assert {str(ds.SOPInstanceUID): ts for ts, ds in received}[archive.mr_rle] == RLE
    assert len(received) == 5


def test_get_sends_only_what_the_requestor_accepts(archive: Archive) -> None:
    result, received = get(
        archive.scp,
        query("STUDY", StudyInstanceUID=archive.study),
        storage=[MRImageStorage],
        syntaxes=[EXPLICIT],
    )
    # the MRs in implicit VR and in RLE are converted; the other classes have no context
    assert result.final.Status == 0xB000
    assert result.counts == (2, 3, 0)
    assert sorted((ts, str(ds.SOPInstanceUID)) for ts, ds in received) == sorted(
        [(EXPLICIT, archive.mr_implicit), (EXPLICIT, archive.mr_rle)]
    )
    assert sorted(result.failed_uids) == sorted([*archive.ct, archive.deflated])


def test_get_at_patient_and_image_level(archive: Archive) -> None:
    result, received = get(archive.scp, query("PATIENT", PatientID="RET-RLE"), PATIENT_GET)
    assert (result.final.Status, result.counts, len(received)) == (0x0000, (1, 0, 0), 1)
    result, received = get(archive.scp, query("IMAGE", SOPInstanceUID=[archive.ct[0], archive.other_ct]))
    assert sorted(str(ds.SOPInstanceUID) for _, ds in received) == sorted([archive.ct[0], archive.other_ct])


# ---- DCMTK ----------------------------------------------------------------------------------------


@pytest.fixture
def storescp(archive: Archive, tmp_path: Path) -> Iterator[Path]:
    """DCMTK's storescp as the peer "DCMTK" (its port in the SCP's peers table)."""
    out = tmp_path / "received"
    out.mkdir()
    port = archive.scp.gateway.peers["DCMTK"][1]
    proc = subprocess.Popen(["storescp", "-aet", "DCMTK", "-od", str(out), "+xa", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        yield out
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _received_uids(directory: Path) -> set[str]:
    return {str(pydicom.dcmread(p).SOPInstanceUID) for p in directory.iterdir() if p.is_file()}


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def test_movescu_moves_a_study_to_storescp(archive: Archive, storescp: Path) -> None:
    _run([
        "movescu", "-S", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", "DCMTK",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.study}",
        "127.0.0.1", str(archive.scp.port),
    ])  # fmt: skip
    expected = {archive.ct[0], archive.ct[1], archive.mr_implicit, archive.mr_rle, archive.deflated}
    assert _received_uids(storescp) == expected


def test_movescu_series_to_an_unknown_ae(archive: Archive) -> None:
    done = subprocess.run(
        [
            "movescu", "-S", "-aet", "MOVESCU", "-aec", AE_TITLE, "-aem", "ELSEWHERE",
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={archive.study}",
            "-k", f"SeriesInstanceUID={archive.ct_series}", "127.0.0.1", str(archive.scp.port),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "MoveDestinationUnknown" in done.stderr


def test_getscu_gets_a_study(archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    _run([
        "getscu", "-S", "-aet", "GETSCU", "-aec", AE_TITLE, "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archive.other_study}",
        "127.0.0.1", str(archive.scp.port),
    ])  # fmt: skip
    assert _received_uids(out) == {archive.other_ct}
