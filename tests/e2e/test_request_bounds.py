"""Bounds on what one request may ask for: the size of its head (431), the length of a frame list, and
the order of frames of a deflated instance (read forwards in one pass)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from dicomd.http.connections import MAX_HEAD

from support.dicom_files import DEFLATED, EXPLICIT, image_dataset, long_element, write_part10
from support.dicomweb import OCTET_ANY, parse_multipart
from support.server import Server, descendants, start_server, stop_server


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker: every request lands on the process whose memory is measured."""
    srv = start_server(tmp_path_factory.mktemp("bounds") / "data", workers=1)
    yield srv
    stop_server(srv)


def _peak_rss_mib(server: Server) -> float:
    """The highest peak resident size (VmHWM) of the server's processes, in MiB."""
    peak = 0
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak / 1024


def _send_head(server: Server, start: bytes, filler: bytes, total: int) -> tuple[bytes, float]:
    """Send `start`, then `filler` repeated up to `total` bytes (as long as the server reads), then the
    end of the head; return what the server answers (until it closes) and the seconds it took."""
    port = urlsplit(server.url).port
    assert port is not None
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(start)
        chunk = filler * (65536 // len(filler))
        sent = 0
        try:
            while sent < total:
                conn.sendall(chunk)
                sent += len(chunk)
            conn.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server answered and closed while we were sending
        answer = b""
        try:
            while piece := conn.recv(65536):
                answer += piece
                if b"\r\n\r\n" in answer and b"}" in answer:
                    break
        except OSError:
            pass
    return answer, time.monotonic() - began


def _assert_431(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["status"] == 431


def test_a_huge_header_gets_431_at_once_and_the_worker_stays_small(one_worker: Server) -> None:
    """Before: a 1 MiB Accept header was read whole (140 MiB grew a worker to 8.5 GB) and answered."""
    before = _peak_rss_mib(one_worker)
    answer, seconds = _send_head(
        one_worker, b"GET /v2/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: ", b"a/b,", 1 << 20
    )
    _assert_431(answer)
    assert seconds < 5
    assert _peak_rss_mib(one_worker) < before + 32
    assert httpx.get(one_worker.v2 + "/studies").status_code == 200  # the worker serves on


def test_a_huge_url_gets_431(one_worker: Server) -> None:
    answer, _ = _send_head(one_worker, b"GET /v2/studies?PatientID=", b"a", 1 << 20)
    _assert_431(answer)


def test_a_large_head_within_the_bound_is_served(one_worker: Server) -> None:
    accept = ",".join(["application/dicom+json"] * ((MAX_HEAD // 2) // 23))
    r = httpx.get(one_worker.v2 + "/studies", headers={"accept": accept, "x-pad": "p" * (MAX_HEAD // 4)})
    assert r.status_code == 200, r.text


# ---- frame lists ---------------------------------------------------------------------------------


def _store(server: Server, tmp_path: Path, ts: str, frames: int, bits: int = 8, rows: int = 4) -> str:
    """Store a native multi-frame instance whose frame i (1-based) is filled with byte i; its URL."""
    ds = image_dataset(rows=rows, columns=rows, bits=bits, frames=frames)
    size = rows * rows * bits // 8
    pixels = b"".join(bytes([i + 1]) * size for i in range(frames))
    path = tmp_path / "multi.dcm"
    write_part10(
        path,
        ds,
        ts,
        [long_element(0x7FE00010, b"OB", len(pixels) + len(pixels) % 2), pixels, b"\0" * (len(pixels) % 2)],
    )
    r = httpx.post(
        one := server.v2 + "/studies",
        content=path.read_bytes(),
        headers={"content-type": "application/dicom", "accept": "application/dicom+json"},
        timeout=30,
    )
    assert r.status_code == 200, (one, r.text)
    return (
        f"{server.v2}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/"
    )


def test_a_frame_list_is_bounded(one_worker: Server, tmp_path: Path) -> None:
    """Before: frames/1,1,1,... with 10,000 numbers was served (10,000 parts)."""
    url = _store(one_worker, tmp_path, EXPLICIT, 3)
    r = httpx.get(url + ",".join(["1"] * 10_000), headers={"accept": OCTET_ANY}, timeout=30)
    assert r.status_code == 400
    assert "frame list" in r.json()["message"] and "1024" in r.json()["message"]
    r = httpx.get(url + ",".join(["3", "1"] * 512), headers={"accept": OCTET_ANY}, timeout=30)
    assert r.status_code == 200  # 1,024 numbers, any order, repeats: native instances
    assert [body[0] for _, body in parse_multipart(r)] == [3, 1] * 512


def test_frames_of_a_deflated_instance_are_asked_for_in_ascending_order(
    one_worker: Server, tmp_path: Path
) -> None:
    """Before: each frame before the one read last inflated the data set again from its start."""
    url = _store(one_worker, tmp_path, DEFLATED, 5)
    for frames in ("3,1", "2,2", "1,2,3,3", "5,4,3,2,1"):
        r = httpx.get(url + frames, headers={"accept": OCTET_ANY}, timeout=30)
        assert r.status_code == 400, frames
        message = r.json()["message"]
        assert "deflated" in message and "strictly ascending" in message
    r = httpx.get(url + "1,3,5", headers={"accept": OCTET_ANY}, timeout=30)
    assert r.status_code == 200
    assert [body for _, body in parse_multipart(r)] == [bytes([i]) * 16 for i in (1, 3, 5)]


def test_bit_packed_frames_of_a_deflated_instance_share_bytes(one_worker: Server, tmp_path: Path) -> None:
    """1-bit frames of 3 x 3 pixels: neighbours share a byte, and ascending lists are served right."""
    ds = image_dataset(rows=3, columns=3, bits=1, frames=4)
    pixels = bytes([0b10101010, 0b11001100, 0b11110000, 0b00001111, 0b10000001])  # 36 bits, 5 bytes
    path = tmp_path / "bits.dcm"
    write_part10(path, ds, DEFLATED, [long_element(0x7FE00010, b"OB", 6), pixels, b"\0"])
    r = httpx.post(
        one_worker.v2 + "/studies",
        content=path.read_bytes(),
        headers={"content-type": "application/dicom", "accept": "application/dicom+json"},
    )
    assert r.status_code == 200, r.text
    url = (
        f"{one_worker.v2}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/"
    )
    r = httpx.get(url + "1,2,3,4", headers={"accept": OCTET_ANY})
    assert r.status_code == 200, r.text
    got = [body for _, body in parse_multipart(r)]
    # frame i covers bits [9i, 9i + 9): its enclosing bytes
    assert got == [pixels[(9 * i) // 8 : (9 * i + 9 + 7) // 8] for i in range(4)]
