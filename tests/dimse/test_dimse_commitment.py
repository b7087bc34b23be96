"""Storage Commitment Push Model SCP (dimse/commitment.py): a modality's N-ACTION is answered at once and the
result comes as an N-EVENT-REPORT on a new association to the modality (a configured peer), naming the
committed instances and, with the reason, those that are not; bad requests get the right status; a report
the modality cannot take yet is sent again."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from support.dimse import DimseServer, dimse_server, store_files
from support.server import free_port

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
MODALITY = "MODALITY"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT, MR = TEST_FILES / "CT_small.dcm", TEST_FILES / "MR_small.dcm"


@dataclass
class Modality:
    """The modality's side: a pynetdicom AE that takes N-EVENT-REPORTs (as the SCU of the Storage
    Commitment SOP class, on an association dicomd requests with the SCP role)."""

    port: int
    reports: list[tuple[int, Dataset, str]] = field(default_factory=list)  # event type, information, caller
    arrived: threading.Condition = field(default_factory=threading.Condition)
    server: Any = None

    def start(self) -> None:
        ae = AE(ae_title=MODALITY)
        ae.add_supported_context(STORAGE_COMMITMENT, scu_role=False, scp_role=True)

        def on_report(event: Any) -> tuple[int, None]:
            with self.arrived:
                self.reports.append(
                    (
                        int(event.request.EventTypeID),
                        event.event_information,
                        str(event.assoc.requestor.ae_title),
                    )
                )
                self.arrived.notify_all()
            return 0x0000, None

        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
        )

    def wait_for(self, count: int, timeout: float) -> list[tuple[int, Dataset, str]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.reports) >= count, timeout)
            return list(self.reports)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


@contextlib.contextmanager
def modality(start: bool = True) -> Iterator[Modality]:
    peer = Modality(free_port())
    if start:
        peer.start()
    try:
        yield peer
    finally:
        peer.close()


def reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def commitment_request(transaction: str, *items: Dataset) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.ReferencedSOPSequence = Sequence(list(items))
    return ds


def n_action(
    port: int, information: Dataset, *, calling: str = MODALITY, action_type: int = 1
) -> tuple[int, str]:
    """The N-ACTION's status and error comment."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(STORAGE_COMMITMENT)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    try:
        status, _reply = assoc.send_n_action(
            information, action_type, STORAGE_COMMITMENT, WELL_KNOWN_INSTANCE
        )
    finally:
        assoc.release()
    assert status is not None and "Status" in status
    return int(status.Status), str(status.get("ErrorComment", ""))


def uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def items(ds: Dataset, keyword: str) -> list[tuple[str, str, int | None]]:
    return sorted(
        (
            str(item.ReferencedSOPClassUID),
            str(item.ReferencedSOPInstanceUID),
            int(item.FailureReason) if "FailureReason" in item else None,
        )
        for item in ds.get(keyword, [])
    )


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DimseServer, Modality]]:
    """dicomd with the modality as a peer, holding CT_small and MR_small (stored by the modality)."""
    with (
        modality() as peer,
        dimse_server(
            tmp_path_factory.mktemp("commitment") / "data",
            "--dicom-peers",
            f"{MODALITY}=127.0.0.1:{peer.port}",
        ) as dicom,
    ):
        assert store_files(dicom.port, [CT, MR], calling=MODALITY) == [0x0000, 0x0000]
        yield dicom, peer


def test_all_committed_is_reported_on_a_new_association(archive: tuple[DimseServer, Modality]) -> None:
    dicom, peer = archive
    before = len(peer.reports)
    transaction = generate_uid()
    request = commitment_request(transaction, reference(*uids(CT)), reference(*uids(MR)))
    assert n_action(dicom.port, request) == (0x0000, "")
    event_type, report, caller = peer.wait_for(before + 1, 30)[before]
    assert event_type == 1
    assert caller == "DICOMD"
    assert str(report.TransactionUID) == transaction
    assert str(report.RetrieveAETitle) == "DICOMD"
    assert items(report, "ReferencedSOPSequence") == sorted([(*uids(CT), None), (*uids(MR), None)])
    assert "FailedSOPSequence" not in report


def test_instances_not_held_fail_with_their_reason(archive: tuple[DimseServer, Modality]) -> None:
    dicom, peer = archive
    before = len(peer.reports)
    ct_class, ct_instance = uids(CT)
    mr_class, _ = uids(MR)
    unknown = generate_uid()
    transaction = generate_uid()
    request = commitment_request(
        transaction,
        reference(ct_class, ct_instance),
        reference(ct_class, unknown),  # never stored
        reference(mr_class, ct_instance),  # stored, but as a CT
    )
    assert n_action(dicom.port, request) == (0x0000, "")
    event_type, report, _ = peer.wait_for(before + 1, 30)[before]
    assert event_type == 2
    assert str(report.TransactionUID) == transaction
    assert items(report, "ReferencedSOPSequence") == [(ct_class, ct_instance, None)]
    assert items(report, "FailedSOPSequence") == sorted(
        [(ct_class, unknown, 0x0112), (mr_class, ct_instance, 0x0119)]
    )


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the invalid Transaction UID, on purpose
def test_bad_requests_get_their_status(archive: tuple[DimseServer, Modality]) -> None:
    dicom, peer = archive
    before = len(peer.reports)
    no_transaction = Dataset()
    no_transaction.ReferencedSOPSequence = Sequence([reference(*uids(CT))])
    assert n_action(dicom.port, no_transaction)[0] == 0x0120  # missing attribute
    assert n_action(dicom.port, commitment_request(generate_uid()))[0] == 0x0120  # no references
    assert n_action(dicom.port, commitment_request("not a uid", reference(*uids(CT))))[0] == 0x0115
    incomplete = Dataset()
    incomplete.ReferencedSOPClassUID = uids(CT)[0]
    assert n_action(dicom.port, commitment_request(generate_uid(), incomplete))[0] == 0x0120
    request = commitment_request(generate_uid(), reference(*uids(CT)))
    assert n_action(dicom.port, request, action_type=2)[0] == 0x0123  # no such action
    # a caller dicomd has no address for: the report would have nowhere to go
    status, comment = n_action(dicom.port, request, calling="STRANGER")
    assert status == 0x0110
    assert "dicom_peers" in comment
    time.sleep(1)
    assert len(peer.reports) == before  # no report for any of them


def test_the_audit_trail_has_the_request(archive: tuple[DimseServer, Modality]) -> None:
    dicom, _ = archive
    request = commitment_request(generate_uid(), reference(*uids(CT)), reference(*uids(MR)))
    assert n_action(dicom.port, request)[0] == 0x0000
    path = dicom.http.data_dir / "audit.jsonl"
    deadline = time.monotonic() + 10
    while True:
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        actions = [e for e in events if e.get("method") == "N-ACTION" and e.get("instances") == 2]
        if actions or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert actions
    assert actions[-1]["outcome"] == 0
    assert actions[-1]["sop_class"] == STORAGE_COMMITMENT


def test_a_report_the_modality_cannot_take_yet_is_sent_again(tmp_path: Path) -> None:
    with (
        modality(start=False) as peer,
        dimse_server(tmp_path / "data", "--dicom-peers", f"{MODALITY}=127.0.0.1:{peer.port}") as dicom,
    ):
        assert store_files(dicom.port, [CT], calling=MODALITY) == [0x0000]
        transaction = generate_uid()
        assert n_action(dicom.port, commitment_request(transaction, reference(*uids(CT)))) == (0x0000, "")
        time.sleep(1)  # the first attempt finds nobody listening
        peer.start()
        event_type, report, _ = peer.wait_for(1, 30)[0]
        assert event_type == 1
        assert str(report.TransactionUID) == transaction
