"""A real `dicomd serve` with its DICOM (DIMSE) listener on, and small DIMSE client helpers (pynetdicom as
the peer; DCMTK's tools run as subprocesses by the tests themselves).

    with dimse_server(tmp_path / "data") as dicom:          # DimseServer: .http (support.server.Server),
        assert echo(dicom.port) == 0x0000                    # .port, .ae_title
        statuses = store_files(dicom.port, [path, ...])     # one C-STORE status per file

Servers allow any calling AE (`--dicom-allowed-callers *`) unless the test says otherwise."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomd.dimse.retrieve import reactor_resumed

from support.server import Server, free_port, start_server, stop_server

DICOMD_AE = "DICOMD"
TEST_AE = "TESTSCU"


@dataclass
class DimseServer:
    http: Server  # the DICOMweb side: http.v2, http.log(), http.data_dir
    port: int  # the DICOM port, on 127.0.0.1
    ae_title: str = DICOMD_AE


def start_dimse_server(
    data_dir: Path,
    *extra: str,
    workers: int = 1,
    allowed_callers: str | None = "*",
    env: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
    calling: str = TEST_AE,
) -> DimseServer:
    """`dicomd serve` with `--dicom-port` on a free port; returns once the listener answers a C-ECHO (the
    supervisor binds the port before the listener process has started: connections wait meanwhile).
    ``allowed_callers`` None leaves the setting alone (default: loopback callers only); ``calling`` is the
    AE title the readiness C-ECHO calls from."""
    port = free_port()
    args = ["--dicom-port", str(port), *extra]
    if allowed_callers is not None:
        args += ["--dicom-allowed-callers", allowed_callers]
    http = start_server(data_dir, *args, workers=workers, env=env)
    server = DimseServer(http, port)
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            if echo(port, calling=calling, timeout=5) == 0x0000:
                return server
        except (OSError, RuntimeError):
            pass
        if http.process.poll() is not None or time.monotonic() > deadline:
            stop_server(http)
            raise RuntimeError(f"the DICOM listener did not answer C-ECHO:\n{http.log()}")
        time.sleep(0.2)


@contextlib.contextmanager
def dimse_server(data_dir: Path, *extra: str, **kwargs: Any) -> Iterator[DimseServer]:
    server = start_dimse_server(data_dir, *extra, **kwargs)
    try:
        yield server
    finally:
        stop_server(server.http)


def listener_pids(server: DimseServer) -> list[int]:
    """The listener processes the server's log announced, in order (restarted ones after the first)."""
    return [int(pid) for pid in re.findall(r"DICOM listener .* \(process (\d+)\)", server.http.log())]


def client_ae(ae_title: str = TEST_AE, timeout: float = 10.0) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def echo(port: int, *, calling: str = TEST_AE, called: str = DICOMD_AE, timeout: float = 10.0) -> int | None:
    """The C-ECHO status (0x0000 = success); None when the association was rejected or aborted."""
    ae = client_ae(calling, timeout)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def storage_context(path: Path) -> PresentationContext:
    """A presentation context for a file: its SOP class, in its own transfer syntax."""
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return build_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])


def store_files(
    port: int,
    paths: Sequence[Path],
    *,
    calling: str = TEST_AE,
    called: str = DICOMD_AE,
    timeout: float = 30.0,
) -> list[int | None]:
    """C-STORE each file over one association (up to 128 distinct contexts), in its own syntax; the status
    of each (None: no response, or no accepted context)."""
    ae = client_ae(calling, timeout)
    contexts: dict[tuple[str, str], PresentationContext] = {}
    for path in paths:
        cx = storage_context(path)
        contexts.setdefault((str(cx.abstract_syntax), str(cx.transfer_syntax[0])), cx)
    assert len(contexts) <= 128, "more than 128 presentation contexts: store in several associations"
    assoc = ae.associate("127.0.0.1", port, ae_title=called, contexts=list(contexts.values()))
    if not assoc.is_established:
        raise RuntimeError("the association was rejected or aborted")
    statuses: list[int | None] = []
    try:
        for path in paths:
            try:
                status = assoc.send_c_store(dcmread(path))
            except ValueError:  # no accepted presentation context for it
                statuses.append(None)
                continue
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        assoc.release()
    return statuses


@dataclass
class Encoded:
    """A data set as sent in a C-STORE: its command's UIDs, the transfer syntax and the encoded bytes."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes


@dataclass
class StoreResponse:
    status: int | None  # None: no response (or no accepted context)
    error_comment: str = ""


def store_encoded(
    port: int,
    items: Sequence[Encoded],
    *,
    calling: str = TEST_AE,
    called: str = DICOMD_AE,
    timeout: float = 30.0,
) -> list[StoreResponse]:
    """C-STORE each item's bytes as they are (no encoding by pynetdicom, so a test knows exactly what was
    sent, and may send what pynetdicom would refuse to) over one association; the responses."""
    ae = client_ae(calling, timeout)
    pairs = dict.fromkeys((item.sop_class, item.transfer_syntax) for item in items)
    assert len(pairs) <= 128, "more than 128 presentation contexts: store in several associations"
    contexts = [build_context(sop_class, syntax) for sop_class, syntax in pairs]
    assoc = ae.associate("127.0.0.1", port, ae_title=called, contexts=contexts)
    if not assoc.is_established:
        raise RuntimeError("the association was rejected or aborted")
    accepted = {
        (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cx.context_id for cx in assoc.accepted_contexts
    }
    responses: list[StoreResponse] = []
    try:
        for message_id, item in enumerate(items, start=1):
            context_id = accepted.get((item.sop_class, item.transfer_syntax))
            if context_id is None:
                responses.append(StoreResponse(None))
                continue
            request = C_STORE()
            request.MessageID = message_id
            request.AffectedSOPClassUID = item.sop_class
            request.AffectedSOPInstanceUID = item.sop_instance
            request.Priority = 0
            request.DataSet = io.BytesIO(item.data)
            with paused_reactor(assoc):
                assoc.dimse.send_msg(request, context_id)
                _, response = assoc.dimse.get_msg(block=True)
            if response is None:
                responses.append(StoreResponse(None))
                continue
            responses.append(StoreResponse(int(response.Status or 0), str(response.ErrorComment or "")))
    finally:
        assoc.release()
    return responses


@contextlib.contextmanager
def paused_reactor(assoc: Any) -> Iterator[None]:
    """As pynetdicom's own send_* do: the association's reactor paused, so that it does not take a
    response off the queue before the test's get_msg does; first it is let resume from the previous pause
    (its stale paused flag would pass the wait below while it is still about to run)."""
    reactor_resumed(assoc)()
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def message_pdus(message: DIMSEMessage, context_id: int, max_pdu: int) -> list[bytes]:
    """A DIMSE message as pynetdicom sends it: its P-DATA-TF PDUs (for a test to send raw)."""
    encoded = []
    for primitive in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        encoded.append(pdu.encode())
    return encoded


def store_request(ds: Dataset, message_id: int = 1, sop_instance: str | None = None) -> C_STORE_RQ:
    """A C-STORE-RQ of a data set in explicit VR little endian; ``sop_instance``: another Affected SOP
    Instance UID than the data set's."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = sop_instance or ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return message
