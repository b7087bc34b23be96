"""The harness of the query/retrieve tests (imported by test_dimse_query.py and test_dimse_retrieve.py):
dicomd's C-FIND/C-MOVE/C-GET handlers bound to a pynetdicom AE on an ephemeral port, in process, over a
real index and object store filled through the STOW ingest path; a pynetdicom storage SCP that collects
what a C-MOVE sends. Its own tests check the harness's pieces."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from dicomd.config import Settings
from dicomd.dimse.context import Gateway
from dicomd.dimse.negotiation import QUERY_RETRIEVE_SOP_CLASSES
from dicomd.dimse.query import handle_find
from dicomd.dimse.retrieve import handle_get, handle_move
from dicomd.index import Index
from dicomd.ingest.committer import GroupCommitter
from dicomd.ingest.service import IngestService
from dicomd.storage.local import LocalObjectStore

from support.dicom_files import make_instance, new_uid

AE_TITLE = "DICOMD"


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _stow_all(index: Index, store: LocalObjectStore, files: Iterable[bytes]) -> None:
    committer = GroupCommitter(index, store, overwrite=False, max_batch=64)
    ingest = IngestService(store, committer, bulk_threshold=1024)
    committer.start()
    try:
        for data in files:
            part = await ingest.stage(_body(data))
            outcome, prepared = await ingest.prepare(part, url_study=None, version=2)
            assert prepared is not None, outcome
            outcome = await ingest.commit(outcome, prepared)
            assert outcome.stored, outcome
    finally:
        await committer.stop()


@dataclass
class Scp:
    """The query/retrieve SCP under test."""

    index: Index
    store: LocalObjectStore
    gateway: Gateway
    ae: AE
    server: Any
    port: int

    def stow(self, files: Iterable[bytes]) -> None:
        asyncio.run(_stow_all(self.index, self.store, files))

    def close(self) -> None:
        self.server.shutdown()
        self.store.close()
        self.index.close()


def start_scp(
    root: Path, peers: dict[str, tuple[str, int]] | None = None, *, timeout: float = 10, index_url: str = ""
) -> Scp:
    """``index_url``: the index (default: SQLite in ``root``)."""
    index = Index(index_url or f"sqlite:///{root / 'index.db'}")
    index.migrate()
    store = LocalObjectStore(root / "objects")
    committer = GroupCommitter(index, store, overwrite=False, max_batch=64)
    gateway = Gateway(
        settings=Settings(data_dir=root, dicom_ae_title=AE_TITLE),
        index=index,
        store=store,
        ingest=IngestService(store, committer, bulk_threshold=1024),
        peers=dict(peers or {}),
    )
    ae = AE(ae_title=AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for model in QUERY_RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(model)
    # C-GET: this side is the storage SCU on the requestor's association (SCP/SCU role selection)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes, scp_role=True, scu_role=False)
    handlers = [
        (evt.EVT_C_FIND, handle_find, [gateway]),
        (evt.EVT_C_MOVE, handle_move, [gateway]),
        (evt.EVT_C_GET, handle_get, [gateway]),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    return Scp(index, store, gateway, ae, server, server.socket.getsockname()[1])


# ---- a client -------------------------------------------------------------------------------------


@dataclass
class Find:
    statuses: list[int] = field(default_factory=list)
    identifiers: list[Dataset] = field(default_factory=list)
    comment: str = ""

    @property
    def final(self) -> int:
        return self.statuses[-1]


def find(
    scp: Scp,
    identifier: Dataset,
    model: str = StudyRootQueryRetrieveInformationModelFind,
    *,
    cancel_after: int | None = None,
) -> Find:
    """A C-FIND through pynetdicom: every response's status, the pending identifiers, the error comment."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AE_TITLE)
    assert assoc.is_established
    out = Find()
    try:
        for status, ds in assoc.send_c_find(identifier, model):
            assert status is not None and "Status" in status, "no response (aborted or timed out)"
            out.statuses.append(int(status.Status))
            out.comment = str(status.get("ErrorComment", "")) or out.comment
            if ds is not None and int(status.Status) in (0xFF00, 0xFF01):
                out.identifiers.append(ds)
                if cancel_after is not None and len(out.identifiers) == cancel_after:
                    assoc.send_c_cancel(1, None, query_model=model)
    finally:
        assoc.release()
    return out


def query(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# ---- a storage SCP (the C-MOVE destination) ---------------------------------------------------------


@dataclass
class Receiver:
    """A pynetdicom storage SCP collecting what it receives: (transfer syntax, data set) per instance."""

    ae: AE
    server: Any
    port: int
    received: list[tuple[str, Dataset]] = field(default_factory=list)
    originators: list[str] = field(default_factory=list)  # each C-STORE's Move Originator AE Title
    nodelay: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sop_uids(self) -> list[str]:
        with self.lock:
            return [str(ds.SOPInstanceUID) for _, ds in self.received]

    def close(self) -> None:
        self.server.shutdown()


def start_receiver(
    ae_title: str = "STORESCP", syntaxes: list[str] | None = None, delay: float = 0, abort_at: int = 0
) -> Receiver:
    """``abort_at``: the receiver aborts the association when its abort_at-th instance arrives, while that
    one waits for its response (never sent)."""
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)  # as every storage SCP does
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes or AllTransferSyntaxes)
    holder: list[Receiver] = []

    def on_store(event: Any) -> int:
        if delay:
            threading.Event().wait(delay)
        ds = event.dataset
        ds.file_meta = event.file_meta
        originator = str(event.request.MoveOriginatorApplicationEntityTitle or "").strip()
        with holder[0].lock:
            holder[0].received.append((str(event.context.transfer_syntax), ds))
            holder[0].originators.append(originator)
            aborting = len(holder[0].received) == abort_at
        if aborting:
            threading.Thread(target=event.assoc.abort).start()
            threading.Event().wait(1.0)  # (the response goes after the abort: never)
        return 0x0000

    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    receiver = Receiver(ae, server, server.socket.getsockname()[1])
    holder.append(receiver)
    return receiver


# ---- test data --------------------------------------------------------------------------------------


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_new_uids(path: Path, patient_id: str) -> bytes:
    """A bundled file with fresh UIDs and the given PatientID (its other elements keep their bytes)."""
    ds = pydicom.dcmread(path)
    sop = new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = patient_id
    return part10(ds)


# ---- the harness's own tests ------------------------------------------------------------------------


def _scp(tmp_path: Path) -> Iterator[Scp]:
    scp = start_scp(tmp_path)
    try:
        yield scp
    finally:
        scp.close()


def test_an_empty_archive_answers_a_find_with_success_and_no_match(tmp_path: Path) -> None:
    for scp in _scp(tmp_path):
        result = find(scp, query("STUDY", StudyInstanceUID=""))
        assert result.statuses == [0x0000] and result.identifiers == []


def test_stowed_instances_are_found(tmp_path: Path) -> None:
    for scp in _scp(tmp_path):
        study = new_uid()
        scp.stow([make_instance(study=study), make_instance(study=study)])
        result = find(scp, query("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances=""))
        assert result.final == 0x0000
        assert [(d.StudyInstanceUID, d.NumberOfStudyRelatedInstances) for d in result.identifiers] == [
            (study, 2)
        ]
