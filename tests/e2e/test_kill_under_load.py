"""kill -9 under load: STOW (one instance per request and batches, on several connections) and C-STORE (over
the DIMSE listener) run while the whole server is SIGKILLed at once; after a restart every instance that
was acknowledged (200 / status 0x0000) is found by QIDO and retrieved byte for byte, what was not
acknowledged is either absent or just as whole, and nothing is left in staging."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from dicomd.dicom.meta import meta_end

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow, value
from support.dimse import Encoded, start_dimse_server, store_encoded
from support.server import kill_group, staged_files, start_server, stop_server

PATIENT = "KILL-LOAD"
CT = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Sent:
    """What was sent and what was acknowledged: SOP Instance UID -> the bytes the stored file must hold
    (STOW: the file after its preamble; C-STORE: the data set after dicomd's File Meta Information)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # sop -> (how, bytes)
    attempted: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def note(self, sop: str, how: str, data: bytes, ok: bool) -> None:
        with self.lock:
            self.attempted[sop] = (how, data)
            if ok:
                self.acknowledged[sop] = (how, data)


def _study() -> tuple[str, str]:
    return new_uid(), new_uid()


def _stow_loop(base: str, batch: int, sent: Sent, stop: threading.Event) -> None:
    study, series = _study()
    with httpx.Client(base_url=base, timeout=30) as client:
        while not stop.is_set():
            files = {
                (sop := new_uid()): make_instance(study=study, series=series, sop=sop, patient_id=PATIENT)
                for _ in range(batch)
            }
            try:
                ok = stow(client, list(files.values())).status_code == 200
            except httpx.HTTPError:  # the server is gone
                ok = False
            for sop, data in files.items():
                sent.note(sop, "stow", data[128:], ok)
            if not ok:
                return


def _dimse_loop(port: int, sent: Sent, stop: threading.Event) -> None:
    study, series = _study()
    while not stop.is_set():
        items = []
        for _ in range(5):
            sop = new_uid()
            data = make_instance(study=study, series=series, sop=sop, patient_id=PATIENT)
            items.append(Encoded(CT, sop, str(ExplicitVRLittleEndian), data[meta_end(data, len(data)) :]))
        try:
            responses = store_encoded(port, items, timeout=5)
        except Exception:  # the listener is gone (refused, aborted)
            responses = []
        for i, item in enumerate(items):
            ok = i < len(responses) and responses[i].status == 0x0000
            sent.note(item.sop_instance, "dimse", item.data, ok)
        if len(responses) < len(items) or any(r.status != 0x0000 for r in responses):
            return


def _check(client: httpx.Client, sop: str, how: str, expected: bytes) -> bool:
    """Whether the instance is stored, byte for byte (it must not be stored otherwise)."""
    found = client.get("/instances", params={"SOPInstanceUID": sop}).json()
    if not found:
        return False
    study, series = value(found[0], "0020000D"), value(found[0], "0020000E")
    r = client.get(
        f"/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": "application/dicom"}
    )
    assert r.status_code == 200, f"{how} {sop}: indexed but not retrievable ({r.status_code})"
    stored = r.content
    if how == "stow":
        assert stored[128:] == expected, f"{sop}: the stored file is not the one sent"
    else:
        assert stored[meta_end(stored, len(stored)) :] == expected, f"{sop}: the stored data set differs"
        assert pydicom.dcmread(io.BytesIO(stored)).SOPInstanceUID == sop
    return True


def test_every_acknowledged_instance_survives_kill_9_under_load(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    dicom = start_dimse_server(data_dir, workers=2)
    sent, stop = Sent(), threading.Event()
    loops = [
        threading.Thread(target=_stow_loop, args=(dicom.http.v2, 1, sent, stop)),
        threading.Thread(target=_stow_loop, args=(dicom.http.v2, 1, sent, stop)),
        threading.Thread(target=_stow_loop, args=(dicom.http.v2, 10, sent, stop)),
        threading.Thread(target=_dimse_loop, args=(dicom.port, sent, stop)),
        threading.Thread(target=_dimse_loop, args=(dicom.port, sent, stop)),
    ]
    try:
        for loop in loops:
            loop.start()
        deadline = time.monotonic() + 30
        while len(sent.acknowledged) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        kill_group(dicom.http)  # mid-flight: requests and associations are cut off
        stop.set()
        for loop in loops:
            loop.join(60)
    acknowledged = dict(sent.acknowledged)
    kinds = {how for how, _ in acknowledged.values()}
    assert len(acknowledged) >= 150 and kinds == {"stow", "dimse"}, (len(acknowledged), kinds)
    # the group commits were made ahead of their one flush (ingest/shared_flush.py): the last ones' rows
    # are what the restart's recovery reads back
    assert _committed_ahead_of_their_flush(data_dir) > 0
    restarted = start_server(data_dir, workers=2)
    try:
        with httpx.Client(base_url=restarted.v2, timeout=30) as client:
            for sop, (how, data) in acknowledged.items():
                assert _check(client, sop, how, data), f"acknowledged {how} instance {sop} was lost"
            unacknowledged = {s: v for s, v in sent.attempted.items() if s not in acknowledged}
            for sop, (how, data) in unacknowledged.items():
                _check(client, sop, how, data)  # absent, or whole
        assert not staged_files(data_dir), staged_files(data_dir)
        assert _committed_ahead_of_their_flush(data_dir) == 0  # all checked (and whole)
    finally:
        stop_server(restarted)


def _committed_ahead_of_their_flush(data_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(data_dir / "index.db")) as db:
        return int(db.execute("SELECT count(*) FROM unsynced_object").fetchone()[0])
