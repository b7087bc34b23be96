"""Bad peers do not stop the DICOM listener: an association aborted mid-store (nothing stored, nothing left
staged), garbage bytes, a PDU announcing gigabytes, a peer that connects and stays silent, a peer that stops
reading its responses; each time the next C-ECHO is answered. And the transport itself, in this process:
TCP_NODELAY on every accepted connection, oversized PDUs cut off before they are read."""

from __future__ import annotations

import io
import os
import signal
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pydicom
import pytest
from pynetdicom import build_context, evt
from pynetdicom.dimse_messages import C_ECHO_RQ
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomd.audit.dimse import DimseAudit
from dicomd.config import Settings
from dicomd.dimse.acceptance import CallerPolicy, check_association
from dicomd.dimse.association_count import AssociationCount
from dicomd.dimse.listener import application_entity
from dicomd.dimse.transport import GatewayServer, Limits, recv_exactly

from support.dicom_files import EXPLICIT, make_instance
from support.dicomweb import wait_for
from support.dimse import (
    DICOMD_AE,
    DimseServer,
    client_ae,
    dimse_server,
    echo,
    listener_pids,
    message_pdus,
    store_request,
)
from support.server import staged_files

TIMEOUT = 2  # the server's dicom_timeout


@pytest.fixture(scope="module")
def dicom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    data_dir = tmp_path_factory.mktemp("dimse-robust") / "data"
    with dimse_server(data_dir, "--dicom-timeout", str(TIMEOUT), "--dicom-max-pdu", "16384") as server:
        yield server


def _instances_of(server: DimseServer, sop: str) -> int:
    response = httpx.get(f"{server.http.v2}/instances", params={"SOPInstanceUID": sop}, timeout=30)
    return len(response.json()) if response.status_code == 200 else 0


def test_an_association_aborted_mid_store_stores_nothing(dicom: DimseServer) -> None:
    ds = pydicom.dcmread(io.BytesIO(make_instance(rows=512, columns=512, patient_id="ABORT-1")))
    ae = client_ae()
    assoc = ae.associate(
        "127.0.0.1", dicom.port, ae_title=DICOMD_AE, contexts=[build_context(ds.SOPClassUID, EXPLICIT)]
    )
    assert assoc.is_established
    message = store_request(ds)
    pdus = message_pdus(message, assoc.accepted_contexts[0].context_id, 16384)
    assert len(pdus) > 4
    raw = assoc.dul.socket.socket
    for pdu in pdus[:3]:  # the command and the start of the data set
        raw.sendall(pdu)
    assoc.abort()
    assert echo(dicom.port) == 0x0000
    time.sleep(0.5)
    assert _instances_of(dicom, str(ds.SOPInstanceUID)) == 0
    assert not staged_files(dicom.http.data_dir)


def test_an_instance_whose_pdus_arrive_in_dribbles_is_stored_whole(dicom: DimseServer) -> None:
    """PDUs cut at odd places and sent a piece at a time, headers included: each read takes what has
    arrived and waits for the rest."""
    data = make_instance(rows=128, columns=128, patient_id="DRIBBLE-1")
    ds = pydicom.dcmread(io.BytesIO(data))
    ae = client_ae()
    assoc = ae.associate(
        "127.0.0.1", dicom.port, ae_title=DICOMD_AE, contexts=[build_context(ds.SOPClassUID, EXPLICIT)]
    )
    assert assoc.is_established
    stream = b"".join(message_pdus(store_request(ds), assoc.accepted_contexts[0].context_id, 16384))
    raw = assoc.dul.socket.socket
    for start in range(0, len(stream), 997):  # shorter than a PDU header at times, across headers too
        raw.sendall(stream[start : start + 997])
        time.sleep(0.001)
    sop = str(ds.SOPInstanceUID)
    assert wait_for(lambda: _instances_of(dicom, sop) == 1, timeout=20)
    assoc.release()
    retrieved = httpx.get(
        f"{dicom.http.v2}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    assert retrieved.status_code == 200
    # the stored file carries dicomd's file meta; its data set is the one sent, pixels and all
    start = retrieved.content.index(b"\r\n\r\n") + 4
    end = retrieved.content.rindex(b"\r\n--")
    stored = pydicom.dcmread(io.BytesIO(retrieved.content[start:end]))
    assert stored.PatientID == "DRIBBLE-1" and stored.PixelData == ds.PixelData


def test_reads_take_what_has_arrived_at_once() -> None:
    """A PDU body that is all in the socket's buffer is read in one call (pynetdicom's own reads take
    4 KiB at a time); one that comes in pieces is put together; a peer that closes mid-PDU leaves what
    came (as pynetdicom's reads do)."""

    class Counting(socket.socket):
        calls = 0

        def recv_into(self, *args: Any) -> int:
            Counting.calls += 1
            return super().recv_into(*args)

    ours, peer = socket.socketpair()
    counted = Counting(ours.family, ours.type, fileno=ours.detach())
    try:
        body = os.urandom(39_068)
        peer.sendall(body)
        assert recv_exactly(counted, len(body)) == body and Counting.calls == 1

        def dribble() -> None:
            for start in range(0, len(body), 5000):
                peer.sendall(body[start : start + 5000])
                time.sleep(0.002)

        sender = threading.Thread(target=dribble)
        sender.start()
        assert recv_exactly(counted, len(body)) == body
        sender.join()
        peer.sendall(b"half")
        peer.close()
        assert recv_exactly(counted, 6) == bytearray(b"half")
    finally:
        counted.close()
        peer.close()


def test_a_large_announced_pdu_is_not_allocated_before_its_bytes_come() -> None:
    """A peer that announces 100 MB and goes silent costs the reading thread its first buffer (256 KiB),
    not the announced length (reads time out as before)."""
    ours, peer = socket.socketpair()
    ours.settimeout(0.3)
    try:
        peer.sendall(b"0123456789")
        tracemalloc.start()
        try:
            with pytest.raises(TimeoutError):
                recv_exactly(ours, 100_000_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20
    finally:
        ours.close()
        peer.close()


def test_garbage_and_a_gigabyte_pdu_are_cut_off(dicom: DimseServer) -> None:
    for garbage in (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"\x01\x00" + struct.pack(">L", 2**31) + b"\x00" * 1000,  # an A-ASSOCIATE-RQ of 2 GiB
        bytes(range(256)) * 8,
    ):
        with socket.create_connection(("127.0.0.1", dicom.port), timeout=10) as peer:
            peer.sendall(garbage)
            started = time.monotonic()
            with _closing():
                while peer.recv(65536):
                    pass
            assert time.monotonic() - started < TIMEOUT + 3
        assert echo(dicom.port) == 0x0000


class _closing:
    """Reading until the server closes: a reset counts as closed too."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, ConnectionResetError)


def test_a_silent_peer_holds_up_nobody_and_is_dropped(dicom: DimseServer) -> None:
    with socket.create_connection(("127.0.0.1", dicom.port), timeout=TIMEOUT + 10) as silent:
        assert echo(dicom.port) == 0x0000
        started = time.monotonic()
        with _closing():
            assert silent.recv(100) == b""
        assert time.monotonic() - started < TIMEOUT + 5


def _audit_events(server: DimseServer) -> list[dict[str, Any]]:
    path = server.http.data_dir / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_a_peer_that_stops_reading_is_dropped_and_others_are_served(dicom: DimseServer) -> None:
    ae = client_ae()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dicom.port, ae_title=DICOMD_AE)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    local_port = raw.getsockname()[1]
    assoc.dul._kill_thread = True  # our side stops reading: responses pile up in the socket buffers
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    time.sleep(0.2)
    request = C_ECHO()
    request.AffectedSOPClassUID = Verification
    context_id = assoc.accepted_contexts[0].context_id
    payload = b""
    for message_id in range(1, 3001):
        request.MessageID = message_id
        message = C_ECHO_RQ()
        message.primitive_to_message(request)
        payload += b"".join(message_pdus(message, context_id, 16384))
    raw.settimeout(10)
    with _closing():
        raw.sendall(payload)  # the server reads these until its own sends block
    assert echo(dicom.port) == 0x0000

    def dropped() -> bool:
        return any(
            e["event_id"]["code"] == "110114"
            and e["client"]["port"] == local_port
            and e["ended"] == "aborted"
            for e in _audit_events(dicom)
        )

    assert wait_for(dropped, timeout=TIMEOUT + 15)
    raw.close()
    assert echo(dicom.port) == 0x0000


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """The listener's association server in this process, answering C-ECHO; yields its port and the
    TCP_NODELAY value seen on each echo's connection."""
    settings = Settings(data_dir=tmp_path, dicom_allowed_callers="*", dicom_max_pdu=16384)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[int] = []

    def on_echo(event: Any) -> int:
        seen.append(event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return 0

    audit = DimseAudit(None)
    count = AssociationCount.single()
    server = application_entity(settings).make_server(
        listener.getsockname(),
        evt_handlers=[
            (evt.EVT_C_ECHO, on_echo),
            (evt.EVT_REQUESTED, check_association, [CallerPolicy.from_settings(settings), audit, count, 4]),
        ],
        server_class=GatewayServer,
        listener=listener,
        limits=Limits(timeout=5, max_pdu=16384, max_message=1 << 20, max_connections=8),
        tls=None,
        audit=audit,
        associations=count,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield listener.getsockname()[1], seen
    server.shutdown()
    thread.join(5)


def test_every_connection_gets_tcp_nodelay(in_process: tuple[int, list[int]]) -> None:
    port, seen = in_process
    assert echo(port) == 0x0000
    assert echo(port) == 0x0000
    assert seen and all(value != 0 for value in seen)


def test_a_p_data_pdu_beyond_the_announced_maximum_is_refused(in_process: tuple[int, list[int]]) -> None:
    port, _ = in_process
    ae = client_ae()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=DICOMD_AE)
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 16384
    raw = assoc.dul.socket.socket
    # a P-DATA-TF PDU announcing more than the maximum length: the connection is closed unread
    raw.sendall(b"\x04\x00" + struct.pack(">L", 16384 + 4096) + b"\x00" * 100)
    assert wait_for(lambda: not assoc.is_alive(), timeout=10)
    assert echo(port) == 0x0000


def test_the_supervisor_restarts_a_listener_that_dies(tmp_path: Path) -> None:
    with dimse_server(tmp_path / "data", "--dicom-listeners", "2", workers=2) as server:
        assert wait_for(lambda: len(listener_pids(server)) == 2, timeout=30)  # ready: one answered
        first = listener_pids(server)
        os.kill(first[0], signal.SIGKILL)
        assert wait_for(lambda: len(listener_pids(server)) == 3, timeout=30)
        assert echo(server.port) == 0x0000
        later = listener_pids(server)
        assert later[2] not in first
        assert os.path.exists(f"/proc/{first[1]}")  # the other one served on
    # stopping the server stops its listeners
    for pid in later[1:]:
        assert wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or _is_zombie(pid), timeout=5)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
