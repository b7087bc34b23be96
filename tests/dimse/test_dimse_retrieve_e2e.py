"""Query/retrieve through a real `dicomd serve` with its DICOM listener (support/dimse.py): instances stored
with C-STORE and STOW are found with findscu, moved with movescu to DCMTK's storescp (a configured peer)
and fetched with getscu; a move to an AE not in dicom_peers is refused with 0xA801."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow
from support.dimse import DICOMD_AE, DimseServer, start_dimse_server, store_files
from support.server import free_port, stop_server

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK keeps Nagle on unless told


class Data:
    def __init__(self) -> None:
        self.patient = "E2E-QR-" + new_uid()[-8:]
        self.study, self.series = new_uid(), new_uid()
        self.dimse_sops = [new_uid(), new_uid()]
        self.stow_sop = new_uid()


@pytest.fixture(scope="module")
def storescp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory: pytest.TempPathFactory, storescp_port: int
) -> Iterator[tuple[DimseServer, Data]]:
    root = tmp_path_factory.mktemp("qr-e2e")
    server = start_dimse_server(root / "data", "--dicom-peers", f"DCMTK=127.0.0.1:{storescp_port}")
    data = Data()
    try:
        files = []
        for sop in data.dimse_sops:
            path = root / f"{sop}.dcm"
            path.write_bytes(
                make_instance(
                    study=data.study,
                    series=data.series,
                    sop=sop,
                    patient_id=data.patient,
                    patient_name="Müller^Jürgen",
                )
            )
            files.append(path)
        assert store_files(server.port, files) == [0x0000, 0x0000]
        with httpx.Client(base_url=server.http.v2, timeout=30) as client:
            part = make_instance(
                study=data.study, sop=data.stow_sop, patient_id=data.patient, patient_name="Müller^Jürgen"
            )
            assert stow(client, [part]).status_code == 200
        yield server, data
    finally:
        stop_server(server.http)


def _dcmtk(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=DCMTK_ENV)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _uids(directory: Path, keyword: str = "SOPInstanceUID") -> list[str]:
    return sorted(str(pydicom.dcmread(p).get(keyword)) for p in directory.iterdir() if p.is_file())


def test_findscu_finds_what_c_store_and_stow_stored(
    archive: tuple[DimseServer, Data], tmp_path: Path
) -> None:
    server, data = archive
    _dcmtk(
        "findscu", "-S", "-aec", DICOMD_AE, "-X", "-od", str(tmp_path),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={data.patient}", "-k", "PatientName=mull*",
        "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    answers = [pydicom.dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
    assert [(a.StudyInstanceUID, a.NumberOfStudyRelatedInstances) for a in answers] == [(data.study, 3)]
    assert str(answers[0].PatientName) == "Müller^Jürgen" and answers[0].SpecificCharacterSet == "ISO_IR 192"


def test_movescu_to_storescp(archive: tuple[DimseServer, Data], storescp_port: int, tmp_path: Path) -> None:
    server, data = archive
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "DCMTK", "-od", str(received), str(storescp_port)], env=DCMTK_ENV
    )
    try:
        deadline = time.monotonic() + 10
        while not _listening(storescp_port):
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        _dcmtk(
            "movescu", "-S", "-aec", DICOMD_AE, "-aem", "DCMTK", "-k", "QueryRetrieveLevel=SERIES",
            "-k", f"StudyInstanceUID={data.study}", "-k", f"SeriesInstanceUID={data.series}",
            "127.0.0.1", str(server.port),
        )  # fmt: skip
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    assert _uids(received) == sorted(data.dimse_sops)


def test_getscu(archive: tuple[DimseServer, Data], tmp_path: Path) -> None:
    server, data = archive
    got = tmp_path / "got"
    got.mkdir()
    _dcmtk(
        "getscu", "-S", "-aec", DICOMD_AE, "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={data.study}", "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert _uids(got) == sorted([*data.dimse_sops, data.stow_sop])


def test_move_to_an_ae_not_configured(archive: tuple[DimseServer, Data]) -> None:
    server, data = archive
    done = _dcmtk(
        "movescu", "-S", "-aec", DICOMD_AE, "-aem", "STRANGER", "-k", "QueryRetrieveLevel=STUDY",
        "-k", f"StudyInstanceUID={data.study}", "127.0.0.1", str(server.port), check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "MoveDestinationUnknown" in done.stderr
    assert data.patient not in server.http.log()  # the refusal is logged without PHI
