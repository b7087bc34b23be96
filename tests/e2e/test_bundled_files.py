"""Every real-world file bundled with pydicom that is a valid Part 10 instance goes through the whole
archive: STOW, byte-exact WADO retrieve, metadata equal to pydicom's DICOM JSON, bulk data and frames.

Several bundled files share a SOP Instance UID (the same image in several transfer syntaxes), so the
files are stored in rounds: each round holds at most one file per SOP Instance UID and is deleted
before the next round stores the next variant.
"""

from __future__ import annotations

import base64
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length

from support.dicom_files import CHARSET_FILES, TEST_FILES, rounds_by_sop
from support.dicomweb import (
    DICOM_ANY,
    OCTET_ANY,
    REFERENCED_SOP_INSTANCE,
    RETRIEVE_URL,
    WARNING_REASON,
    failed_items,
    parse_multipart,
    referenced_items,
    stow,
    value,
)
from support.server import Server, start_server, stop_server

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_BATCH = 16


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def bundled_files() -> list[Path]:
    """Valid Part 10 files (preamble + DICM, all four UIDs valid, PatientID present), not truncated."""
    candidates = sorted(TEST_FILES.glob("*.dcm")) + sorted(p for p in CHARSET_FILES.iterdir() if p.is_file())
    chosen = []
    for path in candidates:
        if "truncated" in path.name:  # deliberately broken: see test_stow
            continue
        raw = path.read_bytes()
        if raw[128:132] != b"DICM":
            continue
        try:
            ds = _read(path)
        except Exception:
            continue
        uids = [str(ds.get(k, "")) for k in _REQUIRED]
        if all(u and len(u) <= 64 and _UID.match(u) for u in uids) and "PatientID" in ds:
            chosen.append(path)
    return chosen


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("bundled") / "data")
    yield srv
    stop_server(srv)


def _pydicom_json(ds: pydicom.Dataset) -> tuple[dict[str, Any], set[str]]:
    """pydicom's DICOM JSON per top-level element (all binaries inline) and the tags pydicom cannot encode."""
    out: dict[str, Any] = {}
    unencodable: set[str] = set()
    for elem in ds:
        key = f"{elem.tag:08X}"
        try:
            out[key] = elem.to_json_dict(None, 1 << 62)
        except Exception:
            unencodable.add(key)
    return out, unencodable


def _compare(
    expected: dict[str, Any],
    got: dict[str, Any],
    path: str,
    bulk: list[tuple[str, str, bytes]],
    errors: list[str],
) -> None:
    for key, exp in expected.items():
        where = f"{path}{key}"
        if key not in got:
            errors.append(f"{where}: missing from metadata")
            continue
        elem = got[key]
        vr_ok = elem.get("vr") == exp.get("vr") or " or " in str(exp.get("vr"))
        if not vr_ok:
            errors.append(f"{where}: vr {elem.get('vr')} != {exp.get('vr')}")
        if "BulkDataURI" in elem:
            if "InlineBinary" not in exp:
                errors.append(f"{where}: BulkDataURI for an element pydicom has no binary value for")
            else:
                bulk.append((where, elem["BulkDataURI"], base64.b64decode(exp["InlineBinary"])))
        elif exp.get("vr") == "SQ" and elem.get("vr") == "SQ":
            exp_items, got_items = exp.get("Value", []), elem.get("Value", [])
            if len(exp_items) != len(got_items):
                errors.append(f"{where}: {len(got_items)} items != {len(exp_items)}")
                continue
            for i, (e_item, g_item) in enumerate(zip(exp_items, got_items, strict=True)):
                _compare(e_item, g_item, f"{where}/{i}/", bulk, errors)
                extra = set(g_item) - set(e_item)
                if extra:
                    errors.append(f"{where}/{i}: unexpected elements {sorted(extra)}")
        else:
            got_cmp = {k: v for k, v in elem.items() if not (k == "vr" and vr_ok)}
            exp_cmp = {k: v for k, v in exp.items() if not (k == "vr" and vr_ok)}
            if got_cmp != exp_cmp:
                errors.append(f"{where}: {str(elem)[:200]} != pydicom {str(exp)[:200]}")


def _number_of_frames(ds: pydicom.Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except ValueError:  # badVR.dcm: NumberOfFrames "1A" is invalid, the server drops it (so: one frame)
        return 1


def _expected_frames(ds: pydicom.Dataset, ts: str) -> list[bytes]:
    pixel_data: bytes = ds.PixelData
    count = _number_of_frames(ds)
    if ts in _NATIVE or ts == _DEFLATED:
        if "NumberOfFrames" in ds and count == 1:
            ds = ds.copy()
            del ds.NumberOfFrames
        total = get_expected_length(ds, unit="bytes")
        size = total // count
        return [pixel_data[i * size : (i + 1) * size] for i in range(count)]
    return list(generate_frames(pixel_data, number_of_frames=count))


def _verify(client: httpx.Client, path: Path, url: str, errors: list[str]) -> None:
    original = path.read_bytes()
    ds = _read(path)
    ts = str(ds.file_meta.TransferSyntaxUID)
    name = path.name

    # 1. byte-exact retrieve (a zeroed preamble is allowed)
    r = client.get(url, headers={"Accept": DICOM_ANY})
    if r.status_code != 200:
        errors.append(f"{name}: retrieve -> {r.status_code} {r.text[:200]}")
        return
    [(headers, data)] = parse_multipart(r)
    if data[128:] != original[128:] or data[:128] not in (original[:128], bytes(128)):
        errors.append(f"{name}: retrieved bytes differ from the stored file ({len(data)} vs {len(original)})")
    if f"transfer-syntax={ts}" not in headers.get("content-type", ""):
        errors.append(f"{name}: part Content-Type {headers.get('content-type')!r} lacks transfer-syntax={ts}")

    # 2. metadata equals pydicom's DICOM JSON for the non-bulk elements
    r = client.get(url + "/metadata")
    if r.status_code != 200:
        errors.append(f"{name}: metadata -> {r.status_code} {r.text[:200]}")
        return
    [got] = r.json()
    expected, unencodable = _pydicom_json(ds)
    bulk: list[tuple[str, str, bytes]] = []
    problems: list[str] = []
    _compare(expected, got, "", bulk, problems)
    extra = set(got) - set(expected) - unencodable
    if extra:
        problems.append(f"unexpected elements {sorted(extra)}")
    errors.extend(f"{name}: metadata {p}" for p in problems)
    if "7FE00010" in ds and ts != _DEFLATED and not any(where == "7FE00010" for where, _, _ in bulk):
        errors.append(f"{name}: Pixel Data has no BulkDataURI")

    # 3. every BulkDataURI returns the exact value bytes (encapsulated pixel data: one part per frame)
    for where, uri, exp_bytes in bulk:
        if not uri.startswith(url + "/bulkdata/"):
            errors.append(f"{name}: BulkDataURI {uri} is not under the instance URL")
        r = client.get(uri, headers={"Accept": OCTET_ANY})
        if r.status_code != 200:
            errors.append(f"{name}: bulk {where} -> {r.status_code} {r.text[:200]}")
            continue
        parts = [body for _, body in parse_multipart(r)]
        if where == "7FE00010" and ts not in _NATIVE:
            want = _expected_frames(ds, ts)
            if parts != want:
                errors.append(f"{name}: bulk {where}: {len(parts)} parts differ from the {len(want)} frames")
        elif parts != [exp_bytes]:
            errors.append(
                f"{name}: bulk {where}: {[len(p) for p in parts]} bytes differ from {len(exp_bytes)}"
            )

    # 4. all frames, in one request, equal the frames of the pixel data
    if "PixelData" in ds and ts not in (_BIG_ENDIAN, _DEFLATED):
        want = _expected_frames(ds, ts)
        numbers = ",".join(str(i + 1) for i in range(len(want)))
        r = client.get(f"{url}/frames/{numbers}", headers={"Accept": OCTET_ANY})
        if r.status_code != 200:
            errors.append(f"{name}: frames {numbers} -> {r.status_code} {r.text[:200]}")
        else:
            parts = [body for _, body in parse_multipart(r)]
            if parts != want:
                got_sizes, want_sizes = [len(p) for p in parts], [len(w) for w in want]
                errors.append(f"{name}: frames differ: got {got_sizes} bytes, want {want_sizes}")


def test_all_bundled_files_round_trip(archive: Server) -> None:
    files = bundled_files()
    assert len(files) > 60
    errors: list[str] = []
    stored = 0
    with httpx.Client(base_url=archive.v2, timeout=60) as client:
        all_rounds = rounds_by_sop(files)
        for round_number, round_files in enumerate(all_rounds):
            urls: dict[str, str] = {}
            for start in range(0, len(round_files), _BATCH):
                batch = round_files[start : start + _BATCH]
                r = stow(client, [p.read_bytes() for p in batch])
                assert r.status_code in (200, 202), r.text
                body = r.json()
                assert not failed_items(body), (
                    [p.name for p in batch],
                    failed_items(body),
                )
                items = referenced_items(body)
                assert len(items) == len(batch)
                # the code's rule: 202 when any stored instance carries a warning, 200 otherwise
                warned = [i for i in items if WARNING_REASON in i]
                assert r.status_code == (202 if warned else 200), body
                for item in items:
                    urls[value(item, REFERENCED_SOP_INSTANCE)] = value(item, RETRIEVE_URL)
            for path in round_files:
                sop = str(_read(path).SOPInstanceUID)
                _verify(client, path, urls[sop], errors)
                stored += 1
            if round_number + 1 < len(all_rounds):
                later = {str(_read(p).SOPInstanceUID) for rnd in all_rounds[round_number + 1 :] for p in rnd}
                for sop in later & set(urls):
                    assert client.delete(urls[sop]).status_code == 204
    assert stored == len(files)
    assert not errors, "\n".join(errors)
