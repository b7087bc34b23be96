"""C-ECHO and C-STORE through a real `dicomd serve` with its DICOM listener: DCMTK's echoscu and storescu
and pynetdicom as peers. Every bundled Part 10 file stored over DIMSE is then found by QIDO and retrieved
by WADO as exactly the file dicomd wrote: the data set the peer sent, byte for byte, behind dicomd's File
Meta Information; statuses for re-sends, duplicates, invalid and unreadable data sets; the audit trail."""

from __future__ import annotations

import io
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import encode

from support.backends import PG_URL, pg_schema_url
from support.dicom_files import (
    CHARSET_FILES,
    DEFLATED,
    EXPLICIT,
    TEST_FILES,
    make_instance,
    new_uid,
    rounds_by_sop,
)
from support.dicomweb import wait_for
from support.dimse import (
    DICOMD_AE,
    TEST_AE,
    DimseServer,
    Encoded,
    StoreResponse,
    client_ae,
    dimse_server,
    echo,
    store_encoded,
    store_files,
)
from support.server import staged_files

DICOMD_IMPLEMENTATION_UID = "2.25.166416390766226519392745669163393720011"
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def _read(source: Path | bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)


def _encode(ds: Dataset) -> bytes | None:
    """The data set as pynetdicom sends it in the file's own syntax (None: it cannot)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded: bytes | None = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    return encoded


def storable_bundled_files() -> list[Path]:
    """pydicom's bundled Part 10 files that are valid instances (the four UIDs, PatientID; not truncated)
    and that pynetdicom can send (encode) in their own transfer syntax."""
    candidates = sorted(TEST_FILES.glob("*.dcm")) + sorted(p for p in CHARSET_FILES.iterdir() if p.is_file())
    chosen = []
    for path in candidates:
        if "truncated" in path.name or path.read_bytes()[128:132] != b"DICM":
            continue
        try:
            ds = _read(path)
            sendable = _encode(ds) is not None
        except Exception:
            continue
        if sendable and all(str(ds.get(k, "")) for k in _REQUIRED) and "PatientID" in ds:
            chosen.append(path)
    return chosen


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    with dimse_server(tmp_path_factory.mktemp("dimse-store") / "data") as server:
        yield server


def _instance(server: DimseServer, study: str, series: str, sop: str) -> bytes:
    url = f"{server.http.v2}/studies/{study}/series/{series}/instances/{sop}"
    response = httpx.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.content


def _found(server: DimseServer, sop: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.http.v2}/instances", params={"SOPInstanceUID": sop}, timeout=30)
    assert response.status_code in (200, 204), response.text
    return response.json() if response.status_code == 200 else []


def _data_set_offset(part10: bytes) -> int:
    """Where the data set starts: after the File Meta Information, whose group length comes first."""
    assert part10[128:132] == b"DICM" and part10[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    return 144 + int.from_bytes(part10[140:144], "little")


def _audit_events(server: DimseServer) -> list[dict[str, Any]]:
    path = server.http.data_dir / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_echo_with_echoscu_and_pynetdicom(dicom: DimseServer) -> None:
    assert echo(dicom.port) == 0x0000
    result = subprocess.run(
        ["echoscu", "-aet", TEST_AE, "-aec", DICOMD_AE, "127.0.0.1", str(dicom.port)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def _encoded_file(path: Path) -> Encoded:
    ds = _read(path)
    data = _encode(ds)
    assert data is not None
    return Encoded(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID), data)


def test_every_bundled_file_stored_by_c_store_is_found_by_qido_and_retrieved_byte_for_byte(
    dicom: DimseServer,
) -> None:
    files = storable_bundled_files()
    assert len(files) > 40
    for batch in rounds_by_sop(files):
        sent = [_encoded_file(path) for path in batch]
        responses = store_encoded(dicom.port, sent)
        for path, response in zip(batch, responses, strict=True):
            assert response.status in (0x0000, 0xB007), f"{path.name}: {response}"
        for path, item in zip(batch, sent, strict=True):
            original = _read(path)
            study, series, sop = (str(original[k].value) for k in _REQUIRED[:3])
            assert len(_found(dicom, sop)) == 1, path.name
            stored = _instance(dicom, study, series, sop)
            meta = _read(stored).file_meta
            assert meta.TransferSyntaxUID == item.transfer_syntax, path.name
            assert meta.ImplementationClassUID == DICOMD_IMPLEMENTATION_UID
            assert meta.MediaStorageSOPInstanceUID == sop
            assert meta.MediaStorageSOPClassUID == original.SOPClassUID
            assert meta.SendingApplicationEntityTitle == TEST_AE
            # the data set exactly as the peer sent it
            assert stored[_data_set_offset(stored) :] == item.data, path.name
            # and, read back, the data set of the original file (pydicom's writer drops group lengths)
            back = _read(stored)
            kept = [e for e in original if e.tag.element != 0]
            assert [e for e in back if e.tag.element != 0] == kept, path.name
        for study in {str(_read(p).StudyInstanceUID) for p in batch}:
            assert httpx.delete(f"{dicom.http.v2}/studies/{study}", timeout=30).status_code in (200, 202, 204)
    assert not staged_files(dicom.http.data_dir)


def test_storescu_stores_and_the_audit_trail_names_each_instance(dicom: DimseServer, tmp_path: Path) -> None:
    study = new_uid()
    sops = [new_uid() for _ in range(3)]
    paths = []
    for i, sop in enumerate(sops):
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(make_instance(study=study, sop=sop, patient_id="DIMSE-1"))
        paths.append(path)
    result = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", DICOMD_AE, "127.0.0.1", str(dicom.port), *map(str, paths)],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for sop in sops:
        assert len(_found(dicom, sop)) == 1

    def stored_events() -> list[dict[str, Any]]:
        return [
            e
            for e in _audit_events(dicom)
            if e.get("method") == "C-STORE" and e["stored"] and e["stored"][0]["instance"] in sops
        ]

    assert wait_for(lambda: len(stored_events()) == 3)
    event = stored_events()[0]
    assert event["event_id"]["code"] == "110107" and event["action"] == "C"
    assert event["who"] == {"subject": "STORESCU", "method": "ae-title"}
    assert event["client"]["address"] == "127.0.0.1"
    assert event["status"] == 0 and event["outcome"] == 0
    assert event["stored"][0]["study"] == study

    def association() -> list[dict[str, Any]]:
        return [
            e
            for e in _audit_events(dicom)
            if e["event_id"]["code"] == "110114" and e["association"] == event["association"]
        ]

    assert wait_for(lambda: len(association()) == 1)
    ended = association()[0]
    assert ended["ended"] == "released" and ended["outcome"] == 0
    assert ended["operations"] == {"C-STORE": 3}
    assert ended["who"]["subject"] == "STORESCU" and ended["called_ae"] == DICOMD_AE


def _store_one(server: DimseServer, ds: Dataset, sop_instance: str | None = None) -> StoreResponse:
    """C-STORE ``ds`` (explicit VR little endian) under the command's SOP Instance UID ``sop_instance``
    (default: the data set's)."""
    data = encode(ds, False, True)
    sop = sop_instance or str(ds.SOPInstanceUID)
    return store_encoded(server.port, [Encoded(str(ds.SOPClassUID), sop, EXPLICIT, data)])[0]


def test_statuses_of_resends_duplicates_and_bad_data_sets(dicom: DimseServer) -> None:
    ds = _read(make_instance(patient_id="DIMSE-2"))
    sop = str(ds.SOPInstanceUID)
    assert _store_one(dicom, ds).status == 0x0000
    # an identical re-send is a success and changes nothing
    assert _store_one(dicom, ds).status == 0x0000
    # other content under the same SOP Instance UID (duplicate_policy reject): duplicate SOP instance
    ds.PatientName = "Other^Content"
    response = _store_one(dicom, ds)
    assert response.status == 0x0111 and response.error_comment
    # the data set is not the instance the command names
    response = _store_one(dicom, ds, sop_instance=new_uid())
    assert response.status == 0xA900 and "C-STORE request" in response.error_comment
    # a key attribute missing
    missing = _read(make_instance(patient_id="DIMSE-3"))
    del missing.StudyInstanceUID
    assert _store_one(dicom, missing).status == 0xA900
    # not a data set at all: the parser takes what it can of explicit VR (no UIDs: does not match), but a
    # deflated one that does not inflate cannot be understood
    garbage = b"\xff\xff\xff\xff not DICOM" * 10
    explicit = Encoded(str(ds.SOPClassUID), new_uid(), EXPLICIT, garbage)
    deflated = Encoded(str(ds.SOPClassUID), new_uid(), DEFLATED, garbage)
    responses = store_encoded(dicom.port, [explicit, deflated])
    assert [r.status for r in responses] == [0xA900, 0xC000]
    assert len(_found(dicom, sop)) == 1
    assert (
        _read(_instance(dicom, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop)).PatientName
        == "Doe^John"
    )
    assert not staged_files(dicom.http.data_dir)
    assert echo(dicom.port) == 0x0000


@pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")
def test_store_and_find_on_postgresql(tmp_path: Path) -> None:
    assert PG_URL
    with pg_schema_url(PG_URL) as url, dimse_server(tmp_path / "data", "--index-url", url) as server:
        paths = [TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small.dcm", TEST_FILES / "JPEG2000.dcm"]
        assert store_files(server.port, paths) == [0, 0, 0]
        for path in paths:
            assert len(_found(server, str(_read(path).SOPInstanceUID))) == 1


def test_find_and_get_through_the_listener_are_audited(dicom: DimseServer) -> None:
    from pynetdicom import build_role, evt
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    study = new_uid()
    ds = _read(make_instance(study=study, patient_id="DIMSE-FIND"))
    assert _store_one(dicom, ds).status == 0x0000
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    query.PatientID = ""
    received: list[Dataset] = []

    def on_store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = client_ae("FINDSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, EXPLICIT)
    role = build_role(CTImageStorage, scp_role=True)
    assoc = ae.associate(
        "127.0.0.1",
        dicom.port,
        ae_title=DICOMD_AE,
        ext_neg=[role],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        answers = list(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind))
        pending = [
            identifier for status, identifier in answers if status and status.Status in (0xFF00, 0xFF01)
        ]
        assert [str(a.PatientID) for a in pending] == ["DIMSE-FIND"]
        finals = [
            int(status.Status)
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
        ]
        assert finals[-1] == 0x0000
    finally:
        assoc.release()
    assert [str(r.SOPInstanceUID) for r in received] == [str(ds.SOPInstanceUID)]

    def events() -> dict[str, dict[str, Any]]:
        found = {}
        for event in _audit_events(dicom):
            if (event.get("who") or {}).get("subject") == "FINDSCU":
                found[event.get("method") or "association"] = event
        return found

    assert wait_for(lambda: {"C-FIND", "C-GET", "association"} <= set(events()))
    found = events()
    assert found["C-FIND"]["event_id"]["code"] == "110112" and found["C-FIND"]["matches"] == 1
    assert found["C-FIND"]["query"]["StudyInstanceUID"] == study
    assert (
        found["C-GET"]["event_id"]["code"] == "110104" and found["C-GET"]["sub_operations"]["completed"] == 1
    )
    assert found["association"]["operations"] == {"C-FIND": 1, "C-GET": 1}


def test_transfer_syntax_preferences(dicom: DimseServer) -> None:
    from pynetdicom import build_context

    ct = "1.2.840.10008.5.1.4.1.1.2"
    jpeg_lossy, j2k_lossless, implicit = (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2",
    )
    proposals = [
        [jpeg_lossy, EXPLICIT],  # never ask a peer to compress with loss for us
        [implicit, j2k_lossless],  # lossless compressed data is taken as it is
        [implicit, EXPLICIT],  # explicit VR keeps the value representations
        [jpeg_lossy],  # lossy data that is lossy already
    ]
    ae = client_ae()
    contexts = [build_context(ct, syntaxes) for syntaxes in proposals]
    assoc = ae.associate("127.0.0.1", dicom.port, ae_title=DICOMD_AE, contexts=contexts)
    assert assoc.is_established
    try:
        accepted = [
            str(cx.transfer_syntax[0]) for cx in sorted(assoc.accepted_contexts, key=lambda c: c.context_id)
        ]
    finally:
        assoc.release()
    assert accepted == [EXPLICIT, j2k_lossless, EXPLICIT, jpeg_lossy]


def test_dicomd_echo_and_send_commands(dicom: DimseServer, tmp_path: Path) -> None:
    import sys

    def dicomd(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dicomd", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    address = f"127.0.0.1:{dicom.port}"
    result = dicomd("echo", address)
    assert result.returncode == 0 and "0x0000" in result.stdout, result.stderr
    assert dicomd("echo", address, "--called-ae", "SOMEONE").returncode == 1
    assert dicomd("echo", "not-an-address").returncode == 2
    # a directory of files: three instances (one compressed) and one that is not DICOM
    folder = tmp_path / "to-send"
    (folder / "sub").mkdir(parents=True)
    study = new_uid()
    files = [folder / "a.dcm", folder / "sub" / "b.dcm"]
    for path in files:
        path.write_bytes(make_instance(study=study, patient_id="DIMSE-SEND"))
    compressed = (TEST_FILES / "MR_small_RLE.dcm").read_bytes()
    (folder / "rle.dcm").write_bytes(compressed)
    (folder / "notes.txt").write_text("not DICOM")
    result = dicomd("send", address, str(folder), "--calling-ae", "SENDER")
    assert result.returncode == 1  # the text file
    assert "3 stored" in result.stdout and "1 failed" in result.stdout
    assert "notes.txt: not sent" in result.stderr
    for path in [*files, folder / "rle.dcm"]:
        original = path.read_bytes()
        ds = _read(original)
        stored = _instance(dicom, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        # sent from the file as it is: the stored data set is the file's, byte for byte
        assert stored[_data_set_offset(stored) :] == original[_data_set_offset(original) :]
    rle = _read(compressed)
    for study_uid in (study, str(rle.StudyInstanceUID)):
        httpx.delete(f"{dicom.http.v2}/studies/{study_uid}", timeout=30)


@pytest.mark.parametrize(
    ("sop_instance", "sending_ae"),
    [("1.2.3.4", "TESTSCU"), ("1.2.3.45", "ODD"), ("1.2.3", ""), ("1.2.3.4", "A\\B"), ("1.2.3.4", "X" * 17)],
)
def test_the_file_meta_is_what_pydicom_writes(sop_instance: str, sending_ae: str) -> None:
    """part10_header encodes the File Meta Information itself (a hot path): byte for byte pydicom's."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    from dicomd.dicom.uids import IMPLEMENTATION_CLASS_UID
    from dicomd.dimse.store import IMPLEMENTATION_VERSION_NAME, part10_header

    sop_class, syntax = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.4.90"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = "DICOMD"
    if sending_ae in ("TESTSCU", "ODD"):  # empty, with a backslash or too long: left out
        meta.SendingApplicationEntityTitle = sending_ae
    meta.ReceivingApplicationEntityTitle = "DICOMD"
    expected = DicomBytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert part10_header(sop_class, sop_instance, syntax, sending_ae, "DICOMD") == expected.getvalue()
