"""Who may associate with the DICOM listener, and its limits: the calling AE allow-list (titles, titles at a
host, loopback-only by default), the called AE title, the association limit (a transient rejection, over
all listener processes), TLS on the DICOM port; every association in the audit trail, refused ones with
their reason."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from support.certificates import make_certificate
from support.dicomweb import wait_for
from support.dimse import DICOMD_AE, DimseServer, client_ae, dimse_server, echo, listener_pids

# A-ASSOCIATE-RJ (result, source, reason)
CALLING_AE_REFUSED = (0x01, 0x01, 0x03)
CALLED_AE_REFUSED = (0x01, 0x01, 0x07)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


def rejection(
    port: int, calling: str, called: str = DICOMD_AE, *, settle: bool = True
) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ's result, source and reason; None when the association was accepted. With
    ``settle``, a rejection for the association limit is tried again for a few seconds: an association
    the test released a moment ago still counts until its threads on the listener's side have ended."""
    deadline = time.monotonic() + 5
    while True:
        found = _rejection(port, calling, called)
        if not settle or found != LOCAL_LIMIT_EXCEEDED or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _rejection(port: int, calling: str, called: str) -> tuple[int, int, int] | None:
    ae = client_ae(calling, 10)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected, "neither accepted nor rejected"
    answer = assoc.acceptor.primitive
    return int(answer.result), int(answer.result_source), int(answer.diagnostic)


def _audit_events(server: DimseServer) -> list[dict[str, Any]]:
    path = server.http.data_dir / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseServer]:
    callers = "GOODAE,HOSTAE@127.0.0.1,FARAE@10.9.8.7"
    data_dir = tmp_path_factory.mktemp("dimse-guarded") / "data"
    with dimse_server(
        data_dir, "--dicom-max-associations", "2", allowed_callers=callers, calling="GOODAE"
    ) as server:
        yield server


def test_only_allowed_calling_ae_titles_associate(guarded: DimseServer) -> None:
    assert rejection(guarded.port, "GOODAE") is None
    assert rejection(guarded.port, "HOSTAE") is None  # allowed from 127.0.0.1
    assert rejection(guarded.port, "FARAE") == CALLING_AE_REFUSED  # allowed from another host only
    assert rejection(guarded.port, "STRANGER") == CALLING_AE_REFUSED
    result = subprocess.run(
        ["echoscu", "-aet", "STRANGER", "-aec", DICOMD_AE, "127.0.0.1", str(guarded.port)],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"Calling AE Title Not Recognized" in result.stdout + result.stderr

    def refused() -> list[dict[str, Any]]:
        return [
            e
            for e in _audit_events(guarded)
            if e["event_id"]["code"] == "110114" and (e.get("who") or {}).get("subject") == "STRANGER"
        ]

    assert wait_for(lambda: len(refused()) == 2)
    event = refused()[0]
    assert event["ended"] == "rejected" and event["outcome"] == 8
    assert "not recognised" in event["rejection"]
    assert event["client"]["address"] == "127.0.0.1"


def test_a_wrong_called_ae_title_is_refused(guarded: DimseServer) -> None:
    assert rejection(guarded.port, "GOODAE", called="NOTDICOMD") == CALLED_AE_REFUSED
    assert echo(guarded.port, calling="GOODAE") == 0x0000


def _open_associations(port: int, count: int) -> list[Any]:
    """``count`` associations open at once; the listener's threads of those just released (an earlier
    test's, the readiness echo's) may still count for a few milliseconds, so it tries again meanwhile."""
    deadline = time.monotonic() + 10
    while True:
        opened = []
        for _ in range(count):
            ae = client_ae("GOODAE")
            ae.add_requested_context(Verification)
            opened.append(ae.associate("127.0.0.1", port, ae_title=DICOMD_AE))
        if all(assoc.is_established for assoc in opened):
            return opened
        for assoc in opened:
            if assoc.is_established:
                assoc.release()
        assert time.monotonic() < deadline, "the listener never had room for two associations"
        time.sleep(0.05)


def test_associations_beyond_the_limit_are_rejected_transiently(guarded: DimseServer) -> None:
    open_ones = _open_associations(guarded.port, 2)
    try:
        assert rejection(guarded.port, "GOODAE", settle=False) == LOCAL_LIMIT_EXCEEDED
    finally:
        for assoc in open_ones:
            assoc.release()
    # room again once they are released (the listener's threads end just after)
    assert wait_for(lambda: rejection(guarded.port, "GOODAE") is None, timeout=10)


def test_the_limit_counts_the_associations_of_every_listener_process(tmp_path: Path) -> None:
    """Two listener processes share the port, the kernel gives each connection to one of them: the limit
    holds over both (each counts its own in shared memory), and what a listener that dies held is
    freed for the one that replaces it."""
    with dimse_server(
        tmp_path / "data", "--dicom-listeners", "2", "--dicom-max-associations", "2", calling="GOODAE"
    ) as server:
        assert wait_for(lambda: len(listener_pids(server)) == 2, timeout=30)  # ready: one answered
        held = _open_associations(server.port, 2)
        # whichever process takes each attempt, it sees both held associations (a connection over twice
        # the limit, counting rejected ones whose threads have not ended yet, is closed unanswered)
        for _ in range(8):
            ae = client_ae("GOODAE", 10)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", server.port, ae_title=DICOMD_AE)
            assert not assoc.is_established
            if assoc.is_rejected:
                answer = assoc.acceptor.primitive
                found = (int(answer.result), int(answer.result_source), int(answer.diagnostic))
                assert found == LOCAL_LIMIT_EXCEEDED
            time.sleep(0.1)
        first = listener_pids(server)
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: len(listener_pids(server)) == 4, timeout=30)
        for assoc in held:
            assoc.abort()
        for assoc in _open_associations(server.port, 2):
            assoc.release()


def test_loopback_callers_only_by_default(tmp_path: Path) -> None:
    with dimse_server(tmp_path / "data", allowed_callers=None) as server:
        assert echo(server.port, calling="ANYONE") == 0x0000
    from dicomd.config import Settings
    from dicomd.dimse.acceptance import CallerPolicy

    policy = CallerPolicy.from_settings(Settings(data_dir=tmp_path))
    assert policy.refusal(DICOMD_AE, "ANYONE", "127.0.0.1") is None
    assert policy.refusal(DICOMD_AE, "ANYONE", "::ffff:127.0.0.1") is None
    assert policy.refusal(DICOMD_AE, "ANYONE", "10.0.0.7") is not None


_HOST = "127.0.0.1"


def _certificate(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1: its file, its key's file, its PEM."""
    made = make_certificate("dicomd-dimse-test")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(made.pem)
    key_file.write_bytes(made.key_pem)
    return cert_file, key_file, made.pem.decode()


def test_tls_on_the_dicom_port(tmp_path: Path) -> None:
    cert_file, key_file, pem = _certificate(tmp_path)
    args = ("--dicom-tls", "true", "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file))
    from support.server import free_port, start_server, stop_server

    port = free_port()
    http = start_server(
        tmp_path / "data",
        *args,
        "--dicom-port",
        str(port),
        "--dicom-allowed-callers",
        "*",
        "--dicom-timeout",
        "3",
        workers=1,
        tls=ssl.create_default_context(cadata=pem),
    )
    try:
        trusted = ssl.create_default_context(cadata=pem)

        def tls_echo() -> int | None:
            ae = client_ae("TLSSCU")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title=DICOMD_AE, tls_args=(trusted, "127.0.0.1"))
            if not assoc.is_established:
                return None
            status = assoc.send_c_echo()
            assoc.release()
            return int(status.Status)

        assert wait_for(lambda: tls_echo() == 0x0000, timeout=20)
        # a peer that connects and never starts its handshake holds up nobody
        with socket.create_connection(("127.0.0.1", port)) as silent:
            assert tls_echo() == 0x0000
            silent.settimeout(10)
            started = time.monotonic()
            assert silent.recv(100) == b""  # closed once the handshake times out
            assert time.monotonic() - started < 9
        # without TLS there is no association
        assert echo(port, timeout=5) is None
        assert tls_echo() == 0x0000
    finally:
        stop_server(http)


def test_start_up_refuses_tls_without_certificates_and_a_taken_dicom_port(tmp_path: Path) -> None:
    import sys

    from support.server import free_port

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "dicomd", "serve", "--data-dir", str(tmp_path / "data")]
        command += ["--port", str(free_port()), "--workers", "1", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    result = serve("--dicom-port", str(free_port()), "--dicom-tls", "true")
    assert result.returncode == 2 and "'dicom_tls' needs 'tls_cert_file'" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = serve("--dicom-port", str(taken.getsockname()[1]))
    assert result.returncode == 1 and "cannot listen for DICOM" in result.stderr


def test_allowed_callers_at_a_host_name(tmp_path: Path) -> None:
    from dicomd.config import Settings
    from dicomd.dimse.acceptance import CALLING_AE_NOT_RECOGNISED, CallerPolicy

    settings = Settings(data_dir=tmp_path, dicom_allowed_callers="CT1@localhost, MR1")
    policy = CallerPolicy.from_settings(settings)
    assert policy.refusal(DICOMD_AE, "CT1", "127.0.0.1") is None
    assert policy.refusal(DICOMD_AE, "MR1", "192.0.2.7") is None
    refused = policy.refusal(DICOMD_AE, "CT1", "192.0.2.7")
    assert refused is not None and refused[0] == CALLING_AE_NOT_RECOGNISED
    assert policy.refusal(DICOMD_AE, "OTHER", "127.0.0.1") is not None
