"""The fast parser against pydicom, element by element, on every bundled real-world file."""

from __future__ import annotations

import base64
import os
import random
import struct
import time
import tracemalloc
import warnings
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomd.dicom import parser as parser_module
from dicomd.dicom.model import InvalidDicom, ParsedInstance
from dicomd.dicom.parser import parse_bytes, parse_file

DATA = Path(os.path.dirname(pydicom.__file__)) / "data"
PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
# deliberate difference: pydicom leaves these ambiguous VRs unresolved, we emit OW (PS3.5 A.1)
UNRESOLVED_VRS = {"OB or OW", "US or SS or OW", "US or OW"}
# pydicom reads these, we reject them on purpose: truncated Pixel Data; a sequence item overrunning
# its sequence's length
EXPECTED_INVALID = {"MR_truncated.dcm", "DICOMDIR-nooffset"}
DEFLATED = "1.2.840.10008.1.2.1.99"


@pytest.fixture(autouse=True, params=["fast", "python"])
def parser_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the C fast path (when built) and with the pure Python loop alone."""
    if request.param == "python":
        monkeypatch.setattr(parser_module, "_SCAN", None)
    elif parser_module._SCAN is None:
        pytest.skip("built without the C fast path")
    return str(request.param)


def _is_part10(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _bundled_files() -> list[Path]:
    out = []
    for folder in ("test_files", "charset_files"):
        for p in sorted((DATA / folder).rglob("*")):
            if p.is_file() and p.suffix in ("", ".dcm") and _is_part10(p):
                out.append(p)
    return out


FILES = _bundled_files()


def _ids(p: Path) -> str:
    return str(p.relative_to(DATA))


class _Failed:
    """pydicom raised while converting this element to JSON."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __repr__(self) -> str:
        return f"<pydicom failed: {type(self.exc).__name__}: {self.exc}>"


def pydicom_json(path: Path, threshold: int) -> tuple[dict[str, Any], Any]:
    """pydicom's DICOM JSON with our bulk rules applied through its bulk data handler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fds = pydicom.dcmread(path)

    def handler_for(path_: str) -> Any:
        def handler(el: Any) -> str:
            value = el.value
            if len(value) > threshold or (el.tag in PIXEL_TAGS and threshold < 1 << 62):
                return "bulkdata/" + path_
            return "INLINE:" + base64.b64encode(value).decode()

        return handler

    def walk(d: Dataset, prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag in list(d.keys()):
            k = f"{tag:08X}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    el = d[tag]
                    if el.VR == "SQ":
                        out[k] = {
                            "vr": "SQ",
                            "Value": [walk(item, f"{prefix}{k}/{i}/") for i, item in enumerate(el.value)],
                        }
                        continue
                    j = el.to_json_dict(handler_for(prefix + k), 0)
            except Exception as exc:
                out[k] = _Failed(exc)
                continue
            uri = j.get("BulkDataURI")
            if isinstance(uri, str) and uri.startswith("INLINE:"):
                del j["BulkDataURI"]
                j["InlineBinary"] = uri[7:]
            if j["vr"] in UNRESOLVED_VRS:
                j["vr"] = "OW"
            out[k] = j
        return out

    return walk(fds, ""), fds


def compare(ours: dict[str, Any], ref: dict[str, Any], warnings_: list[str], where: str = "") -> list[str]:
    """Differences as readable lines (empty = equal)."""
    diffs: list[str] = []
    for k in sorted(set(ours) | set(ref)):
        loc = f"{where}{k}"
        tag = f"({k[:4]},{k[4:]})"
        if k not in ref:
            diffs.append(f"{loc}: only in ours: {ours[k]}")
            continue
        r = ref[k]
        if isinstance(r, _Failed):
            if k in ours:
                # deliberate: empty values inside multi-valued IS/DS/PN become null
                v = ours[k].get("Value")
                if not (isinstance(v, list) and None in v):
                    diffs.append(f"{loc}: pydicom failed ({r!r}) but ours has {ours[k]}")
            elif not any(tag in w for w in warnings_):
                diffs.append(f"{loc}: dropped without a warning ({r!r})")
            continue
        if k not in ours:
            if any(tag in w and "past the end" in w for w in warnings_):
                continue  # deliberate: a value truncated by the end of the file is dropped
            diffs.append(f"{loc}: missing in ours; pydicom has {str(r)[:200]}")
            continue
        o = ours[k]
        if r.get("vr") == "SQ" and o.get("vr") == "SQ":
            ri, oi = r.get("Value", []), o.get("Value", [])
            if len(ri) != len(oi):
                diffs.append(f"{loc}: {len(oi)} items, pydicom {len(ri)}")
                continue
            for i, (a, b) in enumerate(zip(oi, ri, strict=True)):
                diffs += compare(a, b, warnings_, f"{loc}/{i}/")
            continue
        if o != r:
            diffs.append(f"{loc}: ours {str(o)[:300]} != pydicom {str(r)[:300]}")
    return diffs


@pytest.mark.parametrize("path", FILES, ids=_ids)
def test_equals_pydicom(path: Path) -> None:
    if path.name in EXPECTED_INVALID:
        with pytest.raises(InvalidDicom):
            parse_file(path)
        return
    try:
        ref, _ = pydicom_json(path, 1024)
    except Exception as exc:
        pytest.skip(f"pydicom cannot read it: {exc}")
    parsed = parse_file(path)
    diffs = compare(parsed.dataset, ref, parsed.warnings)
    assert not diffs, "\n".join(diffs)
    # same bytes whether from a file or from memory
    assert parse_bytes(path.read_bytes()).dataset == parsed.dataset
    orjson.dumps(parsed.dataset)  # plain JSON types only


@pytest.mark.parametrize("threshold", [0, 16, 100000])
def test_thresholds(threshold: int) -> None:
    for name in ("CT_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "examples_overlay.dcm"):
        path = DATA / "test_files" / name
        ref, _ = pydicom_json(path, threshold)
        parsed = parse_file(path, bulk_threshold=threshold)
        diffs = compare(parsed.dataset, ref, parsed.warnings)
        assert not diffs, f"{name}:\n" + "\n".join(diffs)


def _ref_element(fds: Dataset, path: str) -> Any:
    """pydicom's element for one of our tagpaths ("GGGGEEEE" or "seq/index/tag/...")."""
    parts = path.split("/")
    d: Any = fds
    for i in range(0, len(parts) - 1, 2):
        d = d[int(parts[i], 16)].value[int(parts[i + 1])]
    return d[int(parts[-1], 16)]


@pytest.mark.parametrize("path", [p for p in FILES if p.name not in EXPECTED_INVALID], ids=_ids)
def test_bulk_ranges_and_frames(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fds = pydicom.dcmread(path)
        except Exception as exc:
            pytest.skip(f"pydicom cannot read it: {exc}")
    data = path.read_bytes()
    parsed = parse_file(path, bulk_threshold=64)
    start = parsed.dataset_offset
    if parsed.transfer_syntax_uid == DEFLATED:  # ranges are into the inflated data set
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:])
        start = 0
    for tagpath, r in parsed.bulk.items():
        assert start <= r.offset and r.offset + r.length <= len(data)
        assert data[r.offset : r.offset + r.length] == _ref_element(fds, tagpath).value, tagpath
    if "PixelData" not in fds:
        assert parsed.frames == []
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nf = str(fds.get("NumberOfFrames") or "1")
    nframes = int(nf) if nf.isdigit() else 1  # badVR.dcm has "1A": we drop it and assume 1
    assert parsed.number_of_frames == nframes
    if not parsed.frames:
        assert parsed.warnings, "no frames and no warning"
        return
    assert len(parsed.frames) == nframes
    ours = [b"".join(data[r.offset : r.offset + r.length] for r in frame) for frame in parsed.frames]
    if fds["PixelData"].is_undefined_length:
        ref = list(generate_frames(fds.PixelData, number_of_frames=nframes))
        assert ours == ref
    else:
        bits = fds.Rows * fds.Columns * fds.get("SamplesPerPixel", 1) * fds.BitsAllocated
        if bits % 8 == 0:
            size = bits // 8
            assert ours == [fds.PixelData[i * size : (i + 1) * size] for i in range(nframes)]


def test_frames_native_multiframe() -> None:
    path = DATA / "test_files" / "rtdose.dcm"
    fds = pydicom.dcmread(path)
    parsed = parse_file(path)
    assert parsed.number_of_frames == fds.NumberOfFrames == 15
    size = fds.Rows * fds.Columns * fds.BitsAllocated // 8
    data = path.read_bytes()
    assert [len(f) for f in parsed.frames] == [1] * 15
    for i, (r,) in enumerate(parsed.frames):
        assert r.length == size
        assert data[r.offset : r.offset + size] == fds.PixelData[i * size : (i + 1) * size]
    assert parsed.bulk["7FE00010"].length == len(fds.PixelData)


def test_frames_encapsulated_multiframe() -> None:
    for name in ("SC_rgb_rle_2frame.dcm", "rtdose_rle.dcm", "examples_ybr_color.dcm"):
        path = DATA / "test_files" / name
        fds = pydicom.dcmread(path)
        parsed = parse_file(path)
        n = int(fds.NumberOfFrames)
        assert parsed.number_of_frames == n > 1
        data = path.read_bytes()
        ours = [b"".join(data[r.offset : r.offset + r.length] for r in f) for f in parsed.frames]
        assert ours == list(generate_frames(fds.PixelData, number_of_frames=n)), name
        # the bulk range is the whole encapsulated value: first item tag up to the sequence delimiter
        r = parsed.bulk["7FE00010"]
        assert data[r.offset : r.offset + 4] == b"\xfe\xff\x00\xe0"
        assert data[r.offset + r.length : r.offset + r.length + 4] == b"\xfe\xff\xdd\xe0"


def test_identity_and_meta() -> None:
    path = DATA / "test_files" / "CT_small.dcm"
    fds = pydicom.dcmread(path)
    p = parse_file(path)
    assert p.transfer_syntax_uid == fds.file_meta.TransferSyntaxUID
    assert p.study_instance_uid == fds.StudyInstanceUID
    assert p.series_instance_uid == fds.SeriesInstanceUID
    assert p.sop_instance_uid == fds.SOPInstanceUID
    assert p.sop_class_uid == fds.SOPClassUID
    assert p.file_length == path.stat().st_size
    assert not any(k.startswith("0002") for k in p.dataset)
    assert p.dataset["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert p.number_of_frames == 1 and len(p.frames) == 1
    # no pixel data: no frames
    p = parse_file(DATA / "test_files" / "rtplan.dcm")
    assert p.number_of_frames == 0 and p.frames == []


# ---- synthetic files for the edge cases the bundled files lack ----------------------------------


def _write(ds: Dataset, implicit: bool = False, big: bool = False, ts: str = "") -> bytes:
    from pydicom.uid import ExplicitVRBigEndian

    if not ts:
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRBigEndian if big else ExplicitVRLittleEndian
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    buf = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _raw_element(tag: int, vr: str, value: bytes) -> bytes:
    """Explicit VR LE element, written by hand so that invalid values survive."""
    g, e = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR", "OD", "OL", "OV", "SV", "UV"):
        return struct.pack("<HH2sHL", g, e, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", g, e, vr.encode(), len(value)) + value


def _part10(body: bytes, ts: str = "1.2.840.10008.1.2.1") -> bytes:
    uid = ts.encode() + (b"\0" if len(ts) % 2 else b"")
    meta = _raw_element(0x00020001, "OB", b"\0\1") + _raw_element(0x00020010, "UI", uid)
    meta = _raw_element(0x00020000, "UL", struct.pack("<L", len(meta))) + meta
    return b"\0" * 128 + b"DICM" + meta + body


def test_invalid_values_are_dropped_with_warnings() -> None:
    body = (
        _raw_element(0x00080005, "CS", b"XYZ ")
        + _raw_element(0x00080018, "UI", b"1.2.3\0")
        + _raw_element(0x00100010, "PN", b"Doe^John")
        + _raw_element(0x00181050, "DS", b"1.50")  # SpatialResolution -> 1.5
        + _raw_element(0x00200011, "IS", b"7 ")
        + _raw_element(0x00200013, "IS", b"1A")
        + _raw_element(0x00201041, "DS", b"abc ")
        + _raw_element(0x00280010, "US", b"\1\0\2")  # 3 bytes for US
        + _raw_element(0x00209165, "AT", b"\x20\x00")  # AT too short
    )
    p = parse_bytes(_part10(body))
    ds = p.dataset
    assert ds["00080005"] == {"vr": "CS", "Value": ["XYZ"]}
    assert ds["00080018"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert ds["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert ds["00181050"] == {"vr": "DS", "Value": [1.5]}
    assert ds["00200011"] == {"vr": "IS", "Value": [7]}
    for dropped in ("00200013", "00201041", "00280010", "00209165"):
        assert dropped not in ds
    w = "\n".join(p.warnings)
    assert "Unknown Specific Character Set 'XYZ'" in w
    assert "(0020,0013) InstanceNumber: invalid IS value '1A'" in w
    assert "(0020,1041) SliceLocation: invalid DS value" in w
    assert "(0028,0010) Rows" in w and "(0020,9165)" in w
    assert p.sop_instance_uid == "1.2.3"


def test_value_rules_match_pydicom() -> None:
    """Odd but valid encodings, compared with pydicom's JSON of the same bytes."""
    body = (
        _raw_element(0x00080005, "CS", b"ISO_IR 100")
        + _raw_element(0x00080008, "CS", b"ORIGINAL\\PRIMARY \\AXIAL ")
        + _raw_element(0x00080054, "AE", b" AE1 \\AE2")
        + _raw_element(0x00081030, "LO", b"Caf\xe9 \\ bar\0")
        + _raw_element(0x00100010, "PN", b"A^B=C^D==\\E")
        + _raw_element(0x00102180, "SH", b"")
        + _raw_element(0x00180050, "DS", b" 1e2 \\-0.5")
        + _raw_element(0x00200012, "IS", b"1.0\\+3\\-2")
        + _raw_element(0x00204000, "LT", b"line1\r\nline2\\x  ")
        + _raw_element(0x00081190, "UR", b"http://x/y ")
        + _raw_element(0x00209167, "AT", b"\x18\x00\x50\x00\x20\x00\x13\x00")
        + _raw_element(0x00189219, "SV", struct.pack("<q", -(2**40)))
        + _raw_element(0x0018605A, "FL", struct.pack("<2f", 0.1, -2.5))
        + _raw_element(0x00280030, "DS", b"0.5\\0.5 ")
    )
    data = _part10(body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.dcmread(BytesIO(data)).to_json_dict()
    p = parse_bytes(data)
    assert p.dataset == ref
    assert p.dataset["00081030"]["Value"] == ["Café", " bar"]


def test_sequences_private_and_ambiguous_implicit() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Émile^Zola"
    ds.PixelRepresentation = 1
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.PatientName = "Müller"
    item.LUTDescriptor = [256, -100, 16]  # 'US or SS' resolved through the parent's Pixel Representation
    item.add_new(0x00090010, "LO", "ACME")  # private creator
    item.add_new(0x00091001, "LO", "not in the creator's block")
    item.add_new(0x00091020, "OB", b"\x01" * 2000)  # private, becomes UN in implicit VR, bulk
    inner = Dataset()
    inner.SmallestImagePixelValue = -5
    inner.CodeMeaning = "x" * 10
    item.ReferencedImageSequence = [inner, Dataset()]
    ds.ModalityLUTSequence = [item]
    ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x00291008, "CS", "IMAGE NUM 4")  # known to pydicom's private dictionary: CS
    data = _write(ds, implicit=True)
    ref = _pyd_json_bytes(data)
    p = parse_bytes(data, bulk_threshold=1023)
    diffs = compare(p.dataset, ref, p.warnings)
    assert not diffs, "\n".join(diffs)
    seq_item = p.dataset["00283000"]["Value"][0]
    assert seq_item["00283002"] == {"vr": "SS", "Value": [256, -100, 16]}
    assert seq_item["00081140"]["Value"][0]["00280106"] == {"vr": "SS", "Value": [-5]}
    assert seq_item["00100010"]["Value"] == [{"Alphabetic": "Müller"}]
    assert seq_item["00091020"] == {"vr": "UN", "BulkDataURI": "bulkdata/00283000/0/00091020"}
    r = p.bulk["00283000/0/00091020"]
    assert data[r.offset : r.offset + r.length] == b"\x01" * 2000
    assert p.dataset["00100010"]["Value"] == [{"Alphabetic": "Émile^Zola"}]
    assert p.dataset["00290010"] == {"vr": "LO", "Value": ["SIEMENS CSA HEADER"]}
    assert p.dataset["00291008"] == {"vr": "CS", "Value": ["IMAGE NUM 4"]}


def _pyd_json_bytes(data: bytes) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fds = pydicom.dcmread(BytesIO(data))
        # pydicom's threshold is on the base64 size: 1364 // 4 * 3 == 1023 bytes
        return fds.to_json_dict(1364, lambda el: "bulkdata/" + _find_path(fds, el))


def _find_path(d: Dataset, target: Any, prefix: str = "") -> str:
    for el in d:
        k = prefix + f"{el.tag:08X}"
        if el is target:
            return k
        if el.VR == "SQ":
            for i, item in enumerate(el.value):
                found = _find_path(item, target, f"{k}/{i}/")
                if found:
                    return found
    return ""


def test_un_undefined_length_sequence_explicit() -> None:
    # a sequence written as UN with undefined length in explicit VR: implicit VR LE inside (PS3.5 6.2.2)
    inner = (
        struct.pack("<HHL", 0x0008, 0x0100, 6) + b"ABC123" + struct.pack("<HHL", 0x0008, 0x0104, 4) + b"Text"
    )
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq = struct.pack("<HH2sHL", 0x0040, 0xA043, b"UN", 0, 0xFFFFFFFF) + item
    seq += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    data = _part10(_raw_element(0x00080060, "CS", b"SR") + seq)
    p = parse_bytes(data, bulk_threshold=1023)
    assert p.dataset == _pyd_json_bytes(data)
    assert p.dataset["0040A043"]["Value"][0]["00080100"] == {"vr": "SH", "Value": ["ABC123"]}


def test_not_part10_and_garbage() -> None:
    with pytest.raises(InvalidDicom):
        parse_bytes(b"")
    with pytest.raises(InvalidDicom):
        parse_bytes(b"\0" * 200)
    with pytest.raises(InvalidDicom):  # no preamble: STOW requires Part 10
        parse_file(DATA / "test_files" / "no_meta.dcm")
    with pytest.raises(InvalidDicom):
        parse_bytes(b"\0" * 128 + b"DICM")


FUZZ_FILES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "JPEG2000.dcm",
    "image_dfl.dcm",
    "UN_sequence.dcm",
    "nested_priv_SQ.dcm",
    "SC_rgb_rle_2frame.dcm",
    "reportsi.dcm",
]


@pytest.mark.parametrize("name", FUZZ_FILES)
def test_fuzz_only_invalid_dicom(name: str) -> None:
    data = (DATA / "test_files" / name).read_bytes()
    rng = random.Random(name)
    cases: list[bytes] = [data[: rng.randrange(len(data))] for _ in range(40)]
    for _ in range(120):
        b = bytearray(data)
        for _ in range(rng.choice((1, 2, 8))):
            # flips concentrated in the header, where the structure is
            pos = rng.randrange(min(len(b), 132 + 2000)) if rng.random() < 0.8 else rng.randrange(len(b))
            b[pos] = rng.randrange(256)
        cases.append(bytes(b))
    for case in cases:
        try:
            p = parse_bytes(case)
        except InvalidDicom:
            continue
        assert isinstance(p, ParsedInstance)
        size = len(case)
        if p.transfer_syntax_uid == DEFLATED:  # ranges are into the inflated data set
            size = len(zlib.decompressobj(-zlib.MAX_WBITS).decompress(case[p.dataset_offset :]))
        for r in p.bulk.values():
            assert r.offset >= 0 and r.offset + r.length <= size


def test_large_file_memory_bounded(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Rows = 2048
    ds.Columns = 2048
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = 10
    header = _write(ds)
    frame = 2048 * 2048 * 2
    path = tmp_path / "big.dcm"
    with open(path, "wb") as f:
        f.write(header)
        f.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 10 * frame))
        f.seek(len(header) + 12 + 10 * frame - 1)  # sparse: no 80 MB write
        f.write(b"\0")
    assert path.stat().st_size > 64 * 1024 * 1024
    tracemalloc.start()
    try:
        p = parse_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
    assert p.number_of_frames == 10 and len(p.frames) == 10
    assert p.frames[9][0].offset == len(header) + 12 + 9 * frame
    assert p.bulk["7FE00010"].length == 10 * frame


def test_benchmark_report() -> None:
    """Not a timing assertion: prints the per-element cost next to pydicom's (pytest -s to see)."""
    path = DATA / "test_files" / "CT_small.dcm"
    data = path.read_bytes()
    n = 50
    t = time.perf_counter()
    for _ in range(n):
        p = parse_bytes(data)
    ours = (time.perf_counter() - t) / n
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(5):
            pydicom.dcmread(BytesIO(data)).to_json_dict()
    theirs = (time.perf_counter() - t) / 5
    print(f"\nCT_small ({len(p.dataset)} elements): ours {ours * 1e6:.0f} us, pydicom {theirs * 1e6:.0f} us")


def _image(rows: int, cols: int, bits: int, frames: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    return ds


def _frame_bytes(data: bytes, p: ParsedInstance) -> list[bytes]:
    return [b"".join(data[r.offset : r.offset + r.length] for r in f) for f in p.frames]


def _encapsulated_file(ds: Dataset, pixel_data: bytes) -> bytes:
    from pydicom.uid import JPEGBaseline8Bit

    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _write(ds, ts=JPEGBaseline8Bit)


def test_frames_extended_offset_table() -> None:
    from pydicom.encaps import encapsulate_extended

    frames = [b"\xff\xd8\xff\xe0" + bytes([i + 1]) * (10 + i) for i in range(3)]
    pixel, eot, lengths = encapsulate_extended(frames)
    ds = _image(8, 8, 8, 3)
    ds.ExtendedOffsetTable = eot
    ds.ExtendedOffsetTableLengths = lengths
    data = _encapsulated_file(ds, pixel)
    p = parse_bytes(data)
    assert p.number_of_frames == 3
    assert [b.rstrip(b"\0") for b in _frame_bytes(data, p)] == frames  # items are padded to even length


def test_frames_extended_offset_table_several_fragments() -> None:
    # two fragments a frame, no markers, empty Basic Offset Table: only the EOT can map them
    frags = [bytes([f * 2 + k + 1]) * 6 for f in range(3) for k in range(2)]
    items = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, len(x)) + x for x in frags)
    pixel = struct.pack("<HHL", 0xFFFE, 0xE000, 0) + items
    ds = _image(8, 8, 8, 3)
    ds.ExtendedOffsetTable = struct.pack("<3Q", 0, 28, 56)
    ds.ExtendedOffsetTableLengths = struct.pack("<3Q", 12, 12, 12)
    data = _encapsulated_file(ds, pixel)
    p = parse_bytes(data)
    assert [len(f) for f in p.frames] == [2, 2, 2]
    assert _frame_bytes(data, p) == [frags[0] + frags[1], frags[2] + frags[3], frags[4] + frags[5]]
    # without the table the fragments cannot be mapped
    del ds.ExtendedOffsetTable
    del ds.ExtendedOffsetTableLengths
    p = parse_bytes(_encapsulated_file(ds, pixel))
    assert p.frames == [] and p.warnings


def test_frames_basic_offset_table_several_fragments() -> None:
    from pydicom.encaps import encapsulate

    frames = [b"\xff\xd8\xff\xdb" + bytes([i]) * 40 for i in range(3)]
    data = _encapsulated_file(_image(8, 8, 8, 3), encapsulate(frames, fragments_per_frame=4, has_bot=True))
    p = parse_bytes(data)
    assert [len(f) for f in p.frames] == [4, 4, 4]
    assert _frame_bytes(data, p) == frames


def test_frames_without_offsets_grouped_by_jpeg_markers() -> None:
    from pydicom.encaps import encapsulate

    frames = [b"\xff\xd8\xff\xdb" + bytes([i]) * 40 for i in range(3)]
    data = _encapsulated_file(_image(8, 8, 8, 3), encapsulate(frames, fragments_per_frame=2, has_bot=False))
    p = parse_bytes(data)
    assert [len(f) for f in p.frames] == [2, 2, 2]
    assert _frame_bytes(data, p) == frames
    # fragments that do not start with a marker cannot be grouped: no frames, a warning
    garbled = data.replace(b"\xff\xd8\xff\xdb\x01", b"\x00\xd8\xff\xdb\x01")
    p = parse_bytes(garbled)
    assert p.frames == [] and any("Cannot map" in w for w in p.warnings)


def test_frames_single_bit() -> None:
    ds = _image(3, 3, 1, 4)  # 9 bits a frame: frames straddle bytes
    ds.PixelData = bytes([0b10101010, 0b01010101, 0xFF, 0x00, 0x0F])
    data = _write(ds)
    p = parse_bytes(data)
    start = p.bulk["7FE00010"].offset
    assert [(f[0].offset - start, f[0].length) for f in p.frames] == [(0, 2), (1, 2), (2, 2), (3, 2)]


def test_explicit_un_and_item_charsets_like_pydicom() -> None:
    # an explicit UN of a known public tag is read with its dictionary VR, like pydicom does
    item = _raw_element(0x00080005, "CS", b"ISO_IR 144") + _raw_element(
        0x00100010, "PN", b"\xbb\xee\xdf\xd5\xdd"
    )
    item_bytes = struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item
    bad_item = _raw_element(0x00080005, "CS", b"NOPE") + _raw_element(0x00081030, "LO", b"Caf\xe9")
    item_bytes += struct.pack("<HHL", 0xFFFE, 0xE000, len(bad_item)) + bad_item
    body = (
        _raw_element(0x00080005, "CS", b"ISO_IR 100")
        + _raw_element(0x00080060, "UN", b"CT")
        + _raw_element(0x00100010, "PN", b"M\xfcller^J\xfcrgen=\\A^B")
        + _raw_element(0x00280010, "UN", b"\x00\x02")
        + _raw_element(0x0040A730, "SQ", item_bytes)
    )
    data = _part10(body)
    p = parse_bytes(data)
    assert p.dataset == _pyd_json_bytes(data)
    assert p.dataset["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert p.dataset["00280010"] == {"vr": "US", "Value": [512]}
    items = p.dataset["0040A730"]["Value"]
    assert items[0]["00100010"]["Value"] == [{"Alphabetic": "Люпен"}]
    assert items[1]["00081030"]["Value"] == ["Café"]  # unknown charset: pydicom's fallback, latin-1
    assert any("Unknown Specific Character Set 'NOPE'" in w for w in p.warnings)


def test_empty_values_in_multi_valued_numbers_and_names() -> None:
    body = (
        _raw_element(0x00100010, "PN", b"A^B\\\\C")
        + _raw_element(0x00200032, "DS", b"1\\\\3 ")
        + _raw_element(0x00201002, "IS", b"\\4")
    )
    p = parse_bytes(_part10(body))
    assert p.dataset["00100010"]["Value"] == [{"Alphabetic": "A^B"}, None, {"Alphabetic": "C"}]
    assert p.dataset["00200032"]["Value"] == [1.0, None, 3.0]
    assert p.dataset["00201002"]["Value"] == [None, 4]


def test_malformed_uid_dropped() -> None:
    body = _raw_element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2\0") + _raw_element(
        0x00080018, "UI", b"1.2.3.abc"
    )
    p = parse_bytes(_part10(body))
    assert p.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert p.sop_instance_uid == "" and "00080018" not in p.dataset
    assert any("(0008,0018) SOPInstanceUID: invalid UI value '1.2.3.abc'" in w for w in p.warnings)


def test_big_endian_and_implicit_synthetic_equal_pydicom() -> None:
    ds = _image(2, 2, 16, 1)
    ds.PatientName = "Doe^Jane"
    ds.WindowCenter = [40, 400]
    ds.LargestImagePixelValue = 1000
    ds.ImagePositionPatient = [0.5, -1.25, 3]
    ds.FrameIncrementPointer = 0x00181063
    ds.PixelData = b"\x01\x02\x03\x04\x05\x06\x07\x08"
    for implicit, big in ((True, False), (False, True)):
        data = _write(ds.copy(), implicit=implicit, big=big)
        p = parse_bytes(data, bulk_threshold=1023)
        ref = _pyd_json_bytes(data)
        assert (
            ref.pop("7FE00010")["vr"] == "OW"
        )  # small: pydicom inlines it, Pixel Data is always bulk for us
        assert p.dataset.pop("7FE00010") == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
        assert p.dataset == ref
        assert p.dataset["00280107"]["vr"] == "US"
        r = p.frames[0][0]
        assert data[r.offset : r.offset + r.length] == ds.PixelData


def test_ambiguous_vrs_implicit_like_pydicom() -> None:
    ds = _image(2, 2, 16, 1)
    ds.PixelRepresentation = 1
    lut1 = Dataset()
    lut1.LUTDescriptor = [1, 0, 16]  # one entry: LUT Data is US
    lut1.LUTData = [7]
    lut2 = Dataset()
    lut2.LUTDescriptor = [2, 0, 16]  # LUT Data is OW
    lut2.add_new(0x00283006, "OW", b"\x01\x00\x02\x00")
    ds.VOILUTSequence = [lut1, lut2]
    ds.add_new(0x60003000, "OW", b"\xff\x00" * 4)  # Overlay Data
    ds.add_new(0x00280106, "SS", -3)  # Smallest Image Pixel Value, 'US or SS'
    ds.add_new(0x00143050, "OW", b"\x01\x02")  # DarkCurrentCounts: pydicom leaves 'OB or OW'
    wf = Dataset()
    wf.WaveformBitsAllocated = 16
    wf.WaveformSampleInterpretation = "SS"
    wf.add_new(0x54001010, "OW", b"\x01\x00\x02\x00")  # Waveform Data
    wf.add_new(0x5400100A, "OW", b"\x00\x80")  # Waveform Padding Value
    ds.WaveformSequence = [wf]
    ds.PixelData = b"\0" * 8
    data = _write(ds, implicit=True)
    ref = _pyd_json_bytes(data)
    ref["00143050"]["vr"] = "OW"  # deliberate: unresolved 'OB or OW' becomes OW
    ref.pop("7FE00010")
    p = parse_bytes(data, bulk_threshold=1023)
    assert p.dataset.pop("7FE00010") == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    assert p.dataset == ref
    assert p.dataset["00280106"] == {"vr": "SS", "Value": [-3]}
    assert p.dataset["00283010"]["Value"][0]["00283006"] == {"vr": "US", "Value": [7]}
    assert p.dataset["00283010"]["Value"][1]["00283006"]["vr"] == "OW"
    assert p.dataset["60003000"]["vr"] == "OW"


def _meta_transfer_syntax(path: Path) -> str | None:
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.get("TransferSyntaxUID"))
    except Exception:  # files pydicom cannot read: not deflated ones (all of those are readable)
        return None


def test_may_be_deflated_finds_every_deflated_file() -> None:
    """STOW prepares small parts on the event loop unless they may inflate: no deflated file may slip."""
    deflated = [p for p in FILES if _meta_transfer_syntax(p) == DEFLATED]
    assert deflated
    for path in deflated:
        assert parser_module.may_be_deflated(path.read_bytes()), path
    assert not parser_module.may_be_deflated((DATA / "test_files" / "CT_small.dcm").read_bytes())
