"""Pixel data that must not cost a worker more than its size (issue 9), end to end on a real server:
frame-count and deflate amplification, frames and bulk data streamed in bounded memory, compressed
frames only in their stored syntax, and frame lists that are not numbers.

Memory is how far the worker processes' peak resident set (/proc/<pid>/status VmHWM) rises above their
resident set when the peak is reset (/proc/<pid>/clear_refs) before each step. Bounds are generous (a
shared 2-core machine) but far below what the unbounded code took (noted at each test)."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from support.dicom_files import (
    DEFLATED,
    EXPLICIT,
    TEST_FILES,
    hashed,
    image_dataset,
    long_element,
    make_instance,
    new_uid,
    patterned,
    write_part10,
)
from support.dicomweb import OCTET_ANY, parse_multipart, stow
from support.server import Server, descendants, start_server, stop_server

_BOUNDARY = "dicomd-bomb-boundary"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """One worker: every request lands on the process whose memory is measured."""
    srv = start_server(tmp_path / "data", workers=1)
    yield srv
    stop_server(srv)


def _workers(server: Server) -> list[int]:
    """The processes that serve requests: the worker processes (children of the server process), or
    the server process itself when it runs the only worker."""
    workers = []
    for pid in descendants(server.process.pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return workers or [server.process.pid]


def _status_mib(pids: list[int], field: str) -> float:
    """The highest value of a /proc/<pid>/status memory field of these processes, in MiB."""
    values = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                values.append(int(line.split()[1]) / 1024)
    assert len(values) == len(pids)
    return max(values)


class _Growth:
    """How far the peak resident set of the worker processes rose above what they held at `reset`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.base = 0.0

    def reset(self) -> None:
        for pid in self.pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: the peak resident set := the current one
        self.base = _status_mib(self.pids, "VmRSS")

    def mib(self) -> float:
        return _status_mib(self.pids, "VmHWM") - self.base


def _stow_file(client: httpx.Client, path: Path) -> httpx.Response:
    """STOW one file, streamed from disk (never in memory whole)."""
    head = f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{_BOUNDARY}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        with open(path, "rb") as f:
            while piece := f.read(4 << 20):
                yield piece
        yield tail

    length = len(head) + path.stat().st_size + len(tail)
    content_type = f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'
    return client.post(
        "/studies", content=body(), headers={"Content-Type": content_type, "Content-Length": str(length)}
    )


def _instance_url(ds: pydicom.Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _single_part_digest(response: httpx.Response) -> tuple[dict[str, str], str, int]:
    """Headers, sha256 and length of the one part of a streamed multipart response, read in pieces."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    closing = f"\r\n--{boundary}--\r\n".encode()
    buffered = b""
    chunks = response.iter_bytes(1 << 20)
    while b"\r\n\r\n" not in buffered:
        buffered += next(chunks)
    head, _, rest = buffered.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"--{boundary}"
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    digest = hashlib.sha256()
    held = rest  # the last len(closing) bytes may be the closing delimiter
    length = 0
    for chunk in chunks:
        held += chunk
        keep = held[-len(closing) :]
        digest.update(held[: -len(closing)])
        length += len(held) - len(keep)
        held = keep
    assert held == closing
    return headers, digest.hexdigest(), length


# ---- frame-count amplification ----------------------------------------------------------------


def _frame_bomb(
    tmp_path: Path, pixel_length: int, name: str = "", ds: pydicom.Dataset | None = None
) -> tuple[Path, pydicom.Dataset, bytes]:
    """1x1 pixels of 1 bit and NumberOfFrames 2,000,000,000: one frame per bit of the pixel data."""
    ds = ds or image_dataset(rows=1, columns=1, bits=1, frames=2_000_000_000)
    pixels = random.Random(pixel_length).randbytes(pixel_length)
    path = tmp_path / f"frame-bomb-{pixel_length}{name}.dcm"
    write_part10(path, ds, EXPLICIT, [long_element(0x7FE00010, b"OB", len(pixels)), pixels])
    return path, ds, pixels


def test_frame_bomb_is_stored_and_served_in_constant_time(server: Server, tmp_path: Path) -> None:
    """Before: the 1 MB upload took 22 s to store, peaked the worker at 3.5 GB, grew the index by
    ~190 MB and each frame GET took 19 s."""
    path, ds, pixels = _frame_bomb(tmp_path, 1 << 20)
    growth = _Growth(_workers(server))
    with httpx.Client(base_url=server.v2, timeout=120) as client:
        growth.reset()
        t = time.monotonic()
        r = _stow_file(client, path)
        stow_seconds = time.monotonic() - t
        assert r.status_code in (200, 202), r.text
        assert stow_seconds < 5, f"STOW took {stow_seconds:.1f} s"
        assert growth.mib() < 200, f"the worker grew by {growth.mib():.0f} MiB"

        with sqlite3.connect(f"file:{server.data_dir / 'index.db'}?mode=ro", uri=True) as db:
            frames_len, count = db.execute(
                "SELECT length(frames), number_of_frames FROM instance WHERE sop_instance_uid = ?",
                (ds.SOPInstanceUID,),
            ).fetchone()
        assert frames_len < 200 and count == 2_000_000_000

        url = _instance_url(ds) + "/frames/"
        available = 8 * len(pixels)  # one bit a frame
        for number in (1, 2, 9, available // 2, available):
            t = time.monotonic()
            r = client.get(url + str(number), headers={"Accept": OCTET_ANY})
            assert time.monotonic() - t < 2, f"frame {number} took {time.monotonic() - t:.1f} s"
            assert r.status_code == 200, r.text
            # frame n is bit n-1: its range is the byte that holds it
            assert [body for _, body in parse_multipart(r)] == [
                pixels[(number - 1) // 8 : (number - 1) // 8 + 1]
            ]
        r = client.get(url + f"1,{available}", headers={"Accept": OCTET_ANY})
        assert [body for _, body in parse_multipart(r)] == [pixels[:1], pixels[-1:]]
        # declared but not in the pixel data: 404 as before; the declared count is what is reported
        r = client.get(url + str(available + 1), headers={"Accept": OCTET_ANY})
        assert r.status_code == 404 and f"{available} frame(s)" in r.json()["message"]
        [md] = client.get(_instance_url(ds) + "/metadata").json()
        assert md["00280008"]["Value"] == [2_000_000_000]


def test_small_frame_bomb_does_not_stall_the_worker(server: Server, tmp_path: Path) -> None:
    """A part of at most 64 KiB is prepared on the event loop: before, a 64 KiB frame bomb held the
    worker's other requests for 0.6-0.7 s (more on a slower or busier machine)."""
    bombs = []
    for i in range(4):  # each with its own UIDs, whose lengths vary: sized for its own header
        probe, ds, _ = _frame_bomb(tmp_path, 2, f"-probe{i}")
        pixel_length = (65_536 - probe.stat().st_size + 2) & ~1  # the largest part prepared on the loop
        bombs.append(_frame_bomb(tmp_path, pixel_length, f"-{i}", ds))
    assert all(64_000 < path.stat().st_size <= 65_536 for path, _, _ in bombs)
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as probe:
            while not done.is_set():
                t = time.monotonic()
                assert probe.get("/health/check").status_code == 200
                latencies.append(time.monotonic() - t)
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with httpx.Client(base_url=server.v2, timeout=60) as client:
            for path, _, _ in bombs:
                r = stow(client, [path.read_bytes()])
                assert r.status_code in (200, 202), r.text
    finally:
        done.set()
        poller.join()
    assert latencies and max(latencies) < 0.2, f"a request waited {max(latencies):.2f} s"


# ---- deflate amplification ------------------------------------------------------------------------


def test_deflate_bomb_metadata_is_small_and_bulk_data_streams(server: Server, tmp_path: Path) -> None:
    """A ~600 KB deflated upload whose Pixel Data inflates to 500 MB. Before: every binary value of a
    deflated instance was inline (a 559 MB metadata object), the worker peaked at 1.2 GB on STOW and
    1.7 GB on GET metadata, and bulk data and frames of deflated instances were not served."""
    length = 500_000_000
    ds = image_dataset(rows=20_000, columns=25_000, bits=8)
    path = tmp_path / "deflate-bomb.dcm"
    digest = hashlib.sha256()
    pixels = hashed(patterned(length), digest)
    size = write_part10(path, ds, DEFLATED, [long_element(0x7FE00010, b"OB", length), *pixels])
    assert size < 1 << 20
    want = digest.hexdigest()
    growth = _Growth(_workers(server))
    url = _instance_url(ds)
    with httpx.Client(base_url=server.v2, timeout=120) as client:
        growth.reset()
        r = _stow_file(client, path)
        assert r.status_code == 200, r.text
        assert growth.mib() < 200, f"STOW: the worker grew by {growth.mib():.0f} MiB"

        growth.reset()
        r = client.get(url + "/metadata")
        assert r.status_code == 200
        assert len(r.content) < 4096, len(r.content)
        [md] = r.json()
        assert md["7FE00010"] == {"vr": "OB", "BulkDataURI": server.v2 + url + "/bulkdata/7FE00010"}
        assert growth.mib() < 200, f"metadata: the worker grew by {growth.mib():.0f} MiB"

        for resource in ("/bulkdata/7FE00010", "/frames/1"):
            growth.reset()
            with client.stream("GET", url + resource, headers={"Accept": OCTET_ANY}) as r:
                assert r.status_code == 200, r.read()
                headers, got, got_length = _single_part_digest(r)
            assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
            assert (got_length, got) == (length, want), resource
            assert growth.mib() < 200, f"{resource}: the worker grew by {growth.mib():.0f} MiB"

    # and what pydicom decodes from the same file
    pixel_data = pydicom.dcmread(path).PixelData
    assert hashlib.sha256(pixel_data).hexdigest() == want
    del pixel_data


def _deflated_with_nested_bulk(tmp_path: Path) -> tuple[Path, pydicom.Dataset]:
    """A real deflated file (pydicom's image_dfl.dcm, fresh UIDs) with a large private value and a
    nested one added, deflated by pydicom."""
    ds = pydicom.dcmread(TEST_FILES / "image_dfl.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "DFL-" + ds.SOPInstanceUID[-8:]
    ds.add_new(0x00290010, "LO", "DICOMD TEST")
    ds.add_new(0x00291010, "OB", bytes(range(256)) * 12)
    item = pydicom.Dataset()
    item.add_new(0x00420011, "OB", bytes(range(255, -1, -1)) * 8)
    ds.add_new(0x00081111, "SQ", [item])
    path = tmp_path / "dfl.dcm"
    ds.save_as(path)
    return path, pydicom.dcmread(path)


def test_deflated_bulk_data_and_rebuilt_metadata(server: Server, tmp_path: Path) -> None:
    """Every BulkDataURI of a deflated instance returns pydicom's value, frames are served, and the
    metadata rebuilt from the file (when its object is lost) is the one computed at ingest."""
    path, ref = _deflated_with_nested_bulk(tmp_path)
    url = _instance_url(ref)
    with httpx.Client(base_url=server.v2, timeout=60) as client:
        assert stow(client, [path.read_bytes()]).status_code == 200
        [md] = client.get(url + "/metadata").json()
        uris = {
            "7FE00010": md["7FE00010"]["BulkDataURI"],
            "00291010": md["00291010"]["BulkDataURI"],
            "00081111/0/00420011": md["00081111"]["Value"][0]["00420011"]["BulkDataURI"],
        }
        values = {
            "7FE00010": ref.PixelData,
            "00291010": ref[0x00291010].value,
            "00081111/0/00420011": ref[0x00081111][0][0x00420011].value,
        }
        for where, uri in uris.items():
            assert uri == server.v2 + url + "/bulkdata/" + where
            r = client.get(uri, headers={"Accept": OCTET_ANY})
            assert [body for _, body in parse_multipart(r)] == [values[where]], where
        r = client.get(url + "/frames/1", headers={"Accept": OCTET_ANY})
        assert [body for _, body in parse_multipart(r)] == [ref.PixelData]

        (stored,) = (server.data_dir / "objects" / "objects").glob("*/*.json")
        intact = stored.read_bytes()
        stored.unlink()
        # another base URL: not the worker's cached response, so the object is read (and rebuilt)
        r = client.get(url + "/metadata", headers={"Host": f"localhost:{server.url.rsplit(':', 1)[1]}"})
        assert r.status_code == 200
        assert stored.read_bytes() == intact
        assert "rebuilding metadata object" in server.log()


def test_deflated_instances_stored_before_keep_inline_metadata(server: Server, tmp_path: Path) -> None:
    """A deflated instance stored before ranges into its inflated data set were recorded has no bulk
    data in the index (every binary value was inline): its metadata is rebuilt that way, and it has
    no bulk data or frames to serve."""
    path, ref = _deflated_with_nested_bulk(tmp_path)
    url = _instance_url(ref)
    with httpx.Client(base_url=server.v2, timeout=60) as client:
        assert stow(client, [path.read_bytes()]).status_code == 200
        # what an older dicomd left in the index and storage
        with sqlite3.connect(server.data_dir / "index.db") as db:
            db.execute(
                "UPDATE instance SET bulk = '{}', frames = '[]' WHERE sop_instance_uid = ?",
                (ref.SOPInstanceUID,),
            )
        (stored,) = (server.data_dir / "objects" / "objects").glob("*/*.json")
        stored.unlink()
        r = client.get(url + "/metadata")
        assert r.status_code == 200
        assert b"BulkDataURI" not in r.content
        [md] = r.json()
        assert base64.b64decode(md["7FE00010"]["InlineBinary"]) == ref.PixelData
        assert base64.b64decode(md["00291010"]["InlineBinary"]) == ref[0x00291010].value
        for resource in ("/bulkdata/7FE00010", "/frames/1"):
            assert client.get(url + resource, headers={"Accept": OCTET_ANY}).status_code == 404


# ---- frames and bulk data in bounded memory ------------------------------------------------------


def test_large_frame_and_bulk_data_stream_in_bounded_memory(server: Server, tmp_path: Path) -> None:
    """A 1 GiB single-frame native instance. Before: each range was read whole, a frame or bulkdata
    GET peaked the worker at 2.1 GB."""
    rows, columns = 16_384, 32_768  # 16 bits: 1 GiB
    length = rows * columns * 2
    ds = image_dataset(rows=rows, columns=columns, bits=16)
    digest = hashlib.sha256()
    path = tmp_path / "large.dcm"
    write_part10(
        path, ds, EXPLICIT, [long_element(0x7FE00010, b"OW", length), *hashed(_gib_pieces(length), digest)]
    )
    want = digest.hexdigest()
    growth = _Growth(_workers(server))
    url = _instance_url(ds)
    with httpx.Client(base_url=server.v2, timeout=120) as client:
        r = _stow_file(client, path)
        assert r.status_code == 200, r.text
        path.unlink()  # the disk is shared
        for resource in ("/frames/1", "/bulkdata/7FE00010"):
            growth.reset()
            with client.stream("GET", url + resource, headers={"Accept": OCTET_ANY}) as r:
                assert r.status_code == 200, r.read()
                declared = r.headers.get("content-length")
                headers, got, got_length = _single_part_digest(r)
            assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
            assert (got_length, got) == (length, want), resource
            assert growth.mib() < 200, f"{resource}: the worker grew by {growth.mib():.0f} MiB"
            assert declared is not None and int(declared) > length  # known up front: no chunked encoding


def _gib_pieces(length: int) -> Iterator[bytes]:
    """Pseudo-random pieces of 1 MiB, each stamped with its number (an offset error shows)."""
    block = bytearray(random.Random(7).randbytes(1 << 20))
    for n in range(length >> 20):
        block[:8] = n.to_bytes(8, "little")
        yield bytes(block)


# ---- compressed frames: the stored syntax only ------------------------------------------------------


def _jpeg_instance() -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = "JPEG-" + ds.SOPInstanceUID[-8:]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue(), ds


@pytest.mark.parametrize("resource", ["/frames/1", "/bulkdata/7FE00010"])
def test_compressed_pixel_data_needs_transfer_syntax_any(server: Server, resource: str) -> None:
    """application/octet-stream without transfer-syntax means uncompressed Explicit VR Little Endian: the
    JPEG is decoded (before transcoding existed, the JPEG bytes came back labelled as such)."""
    data, ds = _jpeg_instance()
    ts = str(ds.file_meta.TransferSyntaxUID)
    jpeg = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    url = _instance_url(ds) + resource
    with httpx.Client(base_url=server.v2, timeout=30) as client:
        assert stow(client, [data]).status_code in (200, 202)
        for accept in (
            'multipart/related; type="application/octet-stream"',
            "multipart/related; type=application/octet-stream",
            f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT}',
        ):
            r = client.get(url, headers={"Accept": accept})
            assert r.status_code == 200, (accept, r.text)
            [(headers, body)] = parse_multipart(r)
            assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"
            assert body == np.ascontiguousarray(ds.pixel_array).tobytes()
        served: list[tuple[str | None, str]] = [
            (OCTET_ANY, "application/octet-stream"),
            (
                f'multipart/related; type="application/octet-stream"; transfer-syntax={ts}',
                "application/octet-stream",
            ),
            (f'multipart/related; type="image/jpeg"; transfer-syntax={ts}', "image/jpeg"),
            ('multipart/related; type="image/jpeg"', "image/jpeg"),
            ("*/*", "application/octet-stream"),  # a wildcard accepts the stored syntax, as viewers expect
            ("multipart/related", "application/octet-stream"),
            (None, "application/octet-stream"),
        ]
        for header, media in served:
            r = client.get(url, headers={"Accept": header} if header else {})
            assert r.status_code == 200, (header, r.text)
            parts = parse_multipart(r)
            assert [body for _, body in parts] == jpeg, header
            assert parts[0][0]["content-type"] == f"{media}; transfer-syntax={ts}", header


def test_native_frames_keep_their_default(server: Server) -> None:
    """Native frames are uncompressed already: octet-stream without a transfer syntax, with the default
    named explicitly, or with the stored (implicit VR) syntax are all served."""
    sop, study, series = new_uid(), new_uid(), new_uid()
    data = make_instance(study=study, series=series, sop=sop, rows=4, columns=4, frames=2)
    implicit = pydicom.dcmread(io.BytesIO(data))
    implicit.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    out = io.BytesIO()
    implicit.save_as(out, enforce_file_format=True)
    url = f"/studies/{study}/series/{series}/instances/{sop}/frames/2"
    with httpx.Client(base_url=server.v2, timeout=30) as client:
        assert stow(client, [out.getvalue()]).status_code == 200
        for accept in (
            'multipart/related; type="application/octet-stream"',
            f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT}',
            'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2',
            OCTET_ANY,
            "*/*",
        ):
            r = client.get(url, headers={"Accept": accept})
            assert r.status_code == 200, (accept, r.text)
            [(headers, body)] = parse_multipart(r)
            assert body == implicit.PixelData[32:]
            assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"


# ---- frame lists -------------------------------------------------------------------------------------


def test_frame_lists_that_are_not_ascii_numbers_are_400(server: Server) -> None:
    """str.isdigit() accepts superscript, fullwidth and Arabic-Indic digits, which int() then refuses
    (or reads); int() refuses 5,000 digits: before, these were 500s."""
    sop, study, series = new_uid(), new_uid(), new_uid()
    with httpx.Client(base_url=server.v2, timeout=30) as client:
        assert stow(client, [make_instance(study=study, series=series, sop=sop, frames=3)]).status_code == 200
        base = f"/studies/{study}/series/{series}/instances/{sop}/frames/"
        for frames in ("\u00b2", "1,\u00b2", "\uff11", "1,\u0663", "9" * 5000, "0" * 5000 + "1", "1 2", "+1"):
            r = client.get(base + frames, headers={"Accept": OCTET_ANY})
            assert r.status_code == 400, (frames[:20], r.status_code)
            message = r.json()["message"]
            assert message.startswith("frame list '") and len(message) < 300, message
        assert client.get(base + "3, 1", headers={"Accept": OCTET_ANY}).status_code == 200
        assert client.get(base + "99999999999", headers={"Accept": OCTET_ANY}).status_code == 404
