"""Index.prepare (prepare_instance) gives exactly what the pre-optimisation code gave.

The `_reference_*` functions below are the implementation of rows.prepare_instance and the
normalize helpers it used before it was made cheaper (same code, renamed). Every prepared instance
is compared with the reference: the study/series/instance column dicts, their attrs JSON strings,
and the level split, by value and by repr (key order and value types included).
"""

from __future__ import annotations

import functools
import os
import random
import re
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pytest

from dicomd.dicom.model import ByteRange, InvalidDicom, JsonDataset, NativeFrames, ParsedInstance
from dicomd.dicom.parser import parse_bytes, parse_file
from dicomd.dicom.tags import SPECIFIC_CHARACTER_SET
from dicomd.index import normalize, rows
from dicomd.index.levels import level_of
from dicomd.index.store import Index, NewInstance

PYDICOM_DATA = Path(os.path.dirname(pydicom.__file__)) / "data"


# -- the pre-optimisation reference (rows.py / normalize.py as they were, renamed) --------------

_REFERENCE_DIACRITIC_RANGES = (
    (0x0300, 0x036F),
    (0x1AB0, 0x1AFF),
    (0x1DC0, 0x1DFF),
    (0x20D0, 0x20FF),
    (0xFE20, 0xFE2F),
)
_REFERENCE_WORD_SPLIT = re.compile(r"[\^=\s]+")
_REFERENCE_MAX_ELEMENT_JSON = 4096
_REFERENCE_DROP_DIACRITICS = {cp: None for lo, hi in _REFERENCE_DIACRITIC_RANGES for cp in range(lo, hi + 1)}
_REFERENCE_ODD_GROUP = frozenset("13579BDFbdf")
_REFERENCE_LONG_VRS = frozenset(
    {"SQ", "LT", "ST", "UT", "UC", "UR", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}
)
_REFERENCE_ALL_LEVELS = 3


def _reference_fold(text: str) -> str:
    if text.isascii():
        return text.upper()
    decomposed = unicodedata.normalize("NFKD", text).translate(_REFERENCE_DROP_DIACRITICS)
    return unicodedata.normalize("NFC", decomposed).upper()


def _reference_clean_group(group: str) -> str:
    return "^".join(part.strip() for part in group.split("^")).rstrip("^")


def _reference_pn_string(value: Any) -> str:
    if isinstance(value, dict):
        groups = [str(value.get(k) or "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    else:
        groups = str(value or "").split("=")
    return "=".join(groups).rstrip("=")


def _reference_pn_groups(pn: str) -> list[str]:
    return [g for g in (_reference_clean_group(_reference_fold(x)) for x in pn.split("=")) if g]


def _reference_pn_norm(pn: str) -> str:
    groups = _reference_pn_groups(pn)
    return "=" + "=".join(groups) + "=" if groups else ""


def _reference_pn_words(pn: str) -> str:
    words = [w for w in _REFERENCE_WORD_SPLIT.split(_reference_fold(pn)) if w]
    return " " + " ".join(words) + " " if words else ""


def _reference_norm_date(value: str) -> str:
    return value.strip().replace(".", "").replace("-", "")


def _reference_norm_time(value: str) -> str:
    v = value.strip().replace(":", "")
    head, dot, frac = v.partition(".")
    return head.ljust(6, "0") + (dot + frac if frac else "")


def _reference_first_value(element: dict[str, Any] | None) -> Any:
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    return values[0]


def _reference_first_str(element: dict[str, Any] | None) -> str | None:
    v = _reference_first_value(element)
    if v is None:
        return None
    if element is not None and element.get("vr") == "PN":
        return _reference_pn_string(v) or None
    return str(v).strip() or None


def _reference_first_int(element: dict[str, Any] | None) -> int | None:
    v = _reference_first_value(element)
    if v is None:
        return None
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _reference_strip_bulk(element: dict[str, Any]) -> dict[str, Any] | None:
    if "BulkDataURI" in element or "InlineBinary" in element:
        return None
    if element.get("vr") == "SQ" and element.get("Value"):
        items = []
        for item in element["Value"]:
            if isinstance(item, dict):
                kept = {t: _reference_strip_bulk(e) for t, e in item.items()}
                items.append({t: e for t, e in kept.items() if e is not None})
            else:
                items.append(item)
        return {"vr": "SQ", "Value": items}
    return element


def _reference_keep_tag(tag: str) -> bool:
    return not (len(tag) != 8 or tag[3] in _REFERENCE_ODD_GROUP or tag.endswith("0000"))


def _reference_keep_value(element: dict[str, Any]) -> dict[str, Any] | None:
    values = element.get("Value")
    if values is None:
        return None if len(element) > 1 else element
    vr = element.get("vr")
    if vr == "SQ":
        cleaned = _reference_strip_bulk(element)
        if cleaned is None:
            return None
        element = cleaned
    if (vr in _REFERENCE_LONG_VRS or len(values) > 16) and len(
        orjson.dumps(element)
    ) > _REFERENCE_MAX_ELEMENT_JSON:
        return None
    return element


@functools.lru_cache(maxsize=16384)
def _reference_tag_place(tag: str) -> int:
    if not _reference_keep_tag(tag):
        return -1
    if tag == SPECIFIC_CHARACTER_SET:
        return _REFERENCE_ALL_LEVELS
    return ("study", "series", "instance").index(level_of(tag))


def _reference_split_levels(ds: JsonDataset) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    levels: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
    for tag, element in ds.items():
        place = _reference_tag_place(tag)
        if place < 0:
            continue
        kept = _reference_keep_value(element)
        if kept is None:
            continue
        if place == _REFERENCE_ALL_LEVELS:
            for attrs in levels:
                attrs[tag] = kept
        else:
            levels[place][tag] = kept
    return levels


def _reference_dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _reference_study_values(ds: JsonDataset, attrs: dict[str, Any]) -> dict[str, Any]:
    patient = _reference_first_str(ds.get("00100010")) or ""
    referring = _reference_first_str(ds.get("00080090")) or ""
    birth = _reference_first_str(ds.get("00100030"))
    sdate = _reference_first_str(ds.get("00080020"))
    stime = _reference_first_str(ds.get("00080030"))
    return {
        "patient_id": _reference_first_str(ds.get("00100020")),
        "patient_name": patient or None,
        "patient_name_norm": _reference_pn_norm(patient) or None,
        "patient_name_words": _reference_pn_words(patient) or None,
        "patient_birth_date": _reference_norm_date(birth) if birth else None,
        "patient_sex": _reference_first_str(ds.get("00100040")),
        "accession_number": _reference_first_str(ds.get("00080050")),
        "referring_physician_name": referring or None,
        "referring_physician_name_norm": _reference_pn_norm(referring) or None,
        "referring_physician_name_words": _reference_pn_words(referring) or None,
        "study_date": _reference_norm_date(sdate) if sdate else None,
        "study_time": _reference_norm_time(stime) if stime else None,
        "study_id": _reference_first_str(ds.get("00200010")),
        "study_description": _reference_first_str(ds.get("00081030")),
        "attrs": _reference_dumps(attrs),
    }


def _reference_series_values(ds: JsonDataset, attrs: dict[str, Any]) -> dict[str, Any]:
    pdate = _reference_first_str(ds.get("00400244"))
    ptime = _reference_first_str(ds.get("00400245"))
    return {
        "modality": _reference_first_str(ds.get("00080060")),
        "series_number": _reference_first_int(ds.get("00200011")),
        "series_description": _reference_first_str(ds.get("0008103E")),
        "performed_procedure_step_start_date": _reference_norm_date(pdate) if pdate else None,
        "performed_procedure_step_start_time": _reference_norm_time(ptime) if ptime else None,
        "body_part_examined": _reference_first_str(ds.get("00180015")),
        "manufacturer_model_name": _reference_first_str(ds.get("00081090")),
        "attrs": _reference_dumps(attrs),
    }


def _reference_instance_values(item: NewInstance, attrs: dict[str, Any]) -> dict[str, Any]:
    p = item.parsed
    return {
        "sop_class_uid": p.sop_class_uid,
        "instance_number": _reference_first_int(p.dataset.get("00200013")),
        "transfer_syntax_uid": p.transfer_syntax_uid,
        "object_key": item.object_key,
        "file_size": item.file_size,
        "number_of_frames": p.number_of_frames,
        "frames": _reference_dumps(
            {"offset": p.frames.offset, "frame_bits": p.frames.frame_bits, "frame_count": len(p.frames)}
            if isinstance(p.frames, NativeFrames)  # native frames are described, not listed
            else [[[r.offset, r.length] for r in frame] for frame in p.frames]
        ),
        "bulk": _reference_dumps({path: [r.offset, r.length] for path, r in p.bulk.items()}),
        "attrs": _reference_dumps(attrs),
    }


def _reference_prepare(item: NewInstance) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    p = item.parsed
    study_attrs, series_attrs, instance_attrs = _reference_split_levels(p.dataset)
    return (
        _reference_study_values(p.dataset, study_attrs),
        _reference_series_values(p.dataset, series_attrs),
        _reference_instance_values(item, instance_attrs),
    )


# -- comparison ---------------------------------------------------------------------------------


def _same(new: Any, ref: Any) -> None:
    # == alone would take 1 == 1.0 == True and ignore key order (which the attrs JSON depends on)
    assert new == ref
    assert repr(new) == repr(ref)


def check(parsed: ParsedInstance, object_key: str = "key", file_size: int | None = None) -> None:
    """Index.prepare of `parsed` equals the reference, column by column."""
    item = NewInstance(1, parsed, object_key, parsed.file_length if file_size is None else file_size)
    ref_study, ref_series, ref_instance = _reference_prepare(item)
    prepared = Index.prepare(item)
    assert prepared.item is item
    _same(prepared.study, ref_study)
    _same(prepared.series, ref_series)
    _same(prepared.instance, ref_instance)
    # the level split itself (its JSON is compared above)
    _same(rows._split_levels(parsed.dataset), _reference_split_levels(parsed.dataset))


def _parsed(ds: JsonDataset, **kw: Any) -> ParsedInstance:
    return ParsedInstance(
        transfer_syntax_uid=kw.pop("transfer_syntax_uid", "1.2.840.10008.1.2.1"),
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        dataset=ds,
        **kw,
    )


# -- real files ---------------------------------------------------------------------------------


def _bundled_files() -> list[Path]:
    files = []
    for sub in ("test_files", "charset_files"):
        files += sorted(p for p in (PYDICOM_DATA / sub).rglob("*") if p.is_file())
    return files


def test_bundled_pydicom_files() -> None:
    checked = 0
    for path in _bundled_files():
        # a low bulk threshold as well: more BulkDataURIs, also inside sequence items
        for threshold in (1024, 8):
            try:
                parsed = parse_file(path, bulk_threshold=threshold)
            except InvalidDicom:
                continue
            check(parsed)
            checked += 1
    assert checked > 200  # ~180 of the ~190 files parse (twice each)


def _import_bench() -> Any:
    import bench.corpus  # not an installed package: importable through pytest's pythonpath

    return bench.corpus


def test_bench_corpus() -> None:
    corpus = _import_bench()
    # several instances per series and several series per study: the caches see repeats and misses
    c = corpus.Corpus(corpus.CorpusSpec(name="t", size="tiny", count=300, seed=5))
    for i in range(c.spec.count):
        check(parse_bytes(c.instance(i), bulk_threshold=1024))
    c = corpus.Corpus(corpus.CorpusSpec(name="t", size="ct128", count=40, seed=11))
    for i in range(c.spec.count):
        check(parse_bytes(c.instance(i), bulk_threshold=64))


# -- crafted data sets ----------------------------------------------------------------------------


def _e(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def _seq(*items: Any) -> dict[str, Any]:
    return {"vr": "SQ", "Value": list(items)}


def _code(value: str) -> dict[str, Any]:
    return {"00080100": _e("SH", value), "00080102": _e("SH", "DCM"), "00080104": _e("LO", "meaning")}


def test_crafted_edge_cases() -> None:
    ds: JsonDataset = {
        "00080000": _e("UL", 100),  # group length: left out
        "00080005": _e("CS", "ISO_IR 192"),  # SpecificCharacterSet: at every level
        "00080016": _e("UI", "1.2.840.10008.5.1.4.1.1.2"),
        "00080020": _e("DA", " 2024.01.02 "),
        "00080030": _e("TM", "10:30"),
        "00080050": {"vr": "SH"},  # only a vr
        "00080060": _e("CS", "CT"),
        "00080090": _e("PN", {"Alphabetic": "Dupont^Jean^^Dr", "Ideographic": "", "Phonetic": "デュポン"}),
        "00081030": _e("LO", "   "),  # blank: no column value, element kept
        "0008103E": _e("LO", 12.5),
        "00081032": _seq(_code("A"), _code("B")),
        "00081110": _seq(
            {"00081150": _e("UI", "1.2"), "7FE00010": {"vr": "OB", "BulkDataURI": "bulkdata/x"}}
        ),
        "00081111": _seq({"00081155": {"vr": "OB", "InlineBinary": "AAAA"}, "00081150": _e("UI", "1")}),
        "00082218": _seq(
            {
                "00082228": _seq(
                    {"00091010": {"vr": "OW", "BulkDataURI": "b"}, "00080100": _e("SH", "x")}, "text"
                )
            }
        ),
        "00089215": _seq(),  # empty sequence
        "00089237": {"vr": "SQ"},
        "00091010": _e("LO", "private"),  # private: left out
        "00090010": _e("LO", "CREATOR"),
        "00100010": _e("PN", "Müller^Jérôme=ミュラー"),
        "00100020": _e("LO", " PID1 "),
        "00100030": _e("DA", "1970-01-01"),
        "00100040": _e("CS"),  # empty Value list
        "00101010": {"vr": "AS", "Value": None},
        "00104000": _e("LT", "x" * 5000),  # over MAX_ELEMENT_JSON: left out
        "001021B0": _e("LT", "y" * 500),
        "00180015": _e("CS", "CHEST"),
        "00181030": _e("LO", *["p"] * 17),  # > 16 values, small
        "00181031": _e("LO", *["q" * 300] * 17),  # > 16 values, too long
        "00181032": _e("DS", *[1.5] * 16),
        "00200010": _e("SH", 7),
        "00200011": _e("IS", "12.7"),
        "00200013": _e("IS", "x"),  # not a number
        "00204000": _e("LT", "\u0001" * 700),  # escapes: JSON longer than the text
        "00400244": _e("DA", "20240102"),
        "00400245": _e("TM", "101010.5"),
        "00420011": {"vr": "OB", "InlineBinary": "AAAA"},
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"},
        "7FE00008": {"vr": "OF", "Value": [1.0] * 2000},  # a long binary value as JSON numbers
        "00290000": _e("UL", 4),
        "FFFEE000": _e("UL", 1),
        "0008": _e("CS", "short tag"),
        "0008103e": _e("LO", "lower case"),
        "0009103e": _e("LO", "lower case private"),
    }
    bulk = {"7FE00010": ByteRange(100, 2000), "00081110/0/7FE00010": ByteRange(50, 10)}
    frames = [[ByteRange(100, 1000)], [ByteRange(1100, 400), ByteRange(1500, 500)]]
    check(_parsed(ds, bulk=bulk, frames=frames, number_of_frames=2, file_length=2100))
    check(_parsed(ds), object_key="other", file_size=0)
    check(_parsed({}))
    # SpecificCharacterSet alone, and at the end (the level dicts keep data set order)
    check(_parsed({SPECIFIC_CHARACTER_SET: _e("CS", "", "ISO 2022 IR 87")}))
    check(_parsed(dict(reversed(list(ds.items())))))


def test_sequences_not_in_plain_form() -> None:
    """Sequences that the bulk stripping rebuilds although nothing is stripped."""
    item = _code("A")
    cases = [
        {"Value": [item], "vr": "SQ"},  # "Value" before "vr"
        {"vr": "SQ", "Value": [item], "extra": 1},  # another key
        {"vr": "SQ", "Value": (item,)},  # a tuple
        _seq({"00081032": {"Value": [item], "vr": "SQ"}}),  # the same, nested
        _seq({"00081032": {"vr": "SQ", "Value": (item,)}}),
        _seq({"00081032": {"vr": "SQ", "Value": [item], "x": None}}),
        _seq({"00081032": {"vr": "SQ", "Value": []}, "00081033": {"vr": "SQ"}}),
        _seq(None, 1, "text", [item]),  # items that are not data sets
        _seq(item, {}),
        _seq({"00081032": _seq({"00081032": _seq({"00081032": _seq(item)})})}),  # deep
        _seq({"00081032": _seq({"00081032": _seq({"7FE00010": {"vr": "OB", "BulkDataURI": "u"}})})}),
        {"vr": "SQ", "Value": [item], "BulkDataURI": "u"},
        {"vr": "SQ", "InlineBinary": "AAAA"},
        _seq(*[_code("C" * 60)] * 40),  # plain but over MAX_ELEMENT_JSON
    ]
    for i, element in enumerate(cases):
        check(_parsed({"00080005": _e("CS", "ISO_IR 100"), "00081032": element, "00400275": element}))
        check(_parsed({"00081110": element}), object_key=str(i))


def test_random_data_sets() -> None:
    """Seeded random data sets over tags, VRs and values around every rule of the split."""
    rng = random.Random(1234)
    tags = [
        "00080005", "00080020", "00080030", "00080050", "00080060", "00080090", "00081030", "0008103E",
        "00081090", "00100010", "00100020", "00100030", "00100040", "00100041", "00102210", "00180015",
        "00200010", "00200011", "00200013", "00400244", "00400245", "00280010", "7FE00010", "00090010",
        "00091001", "00190000", "00080000", "00330010", "7FE10010", "00081032", "00400275", "00189346",
    ]  # fmt: skip
    vrs = ["CS", "LO", "PN", "DA", "TM", "IS", "DS", "US", "FD", "SQ", "LT", "ST", "UT", "UN", "OB"]
    vrs += ["OW", "UI"]
    names: list[Any] = ["Doe^John", "Müller^Jérôme", "山田^太郎=やまだ^たろう", "", " ^ ", "Ng="]
    names.append({"Alphabetic": "Ng^Wei"})

    def value(vr: str) -> Any:
        r = rng.random()
        if vr == "PN":
            return rng.choice(names)
        if vr in ("US", "FD", "DS", "IS") and r < 0.6:
            return rng.choice([0, 7, -2, 1.5, 1e300, True, "12", " 3.9 ", "x", None])
        long_text = "é" * rng.randrange(1, 1500)
        return rng.choice(["", " ", "abc", "20240101", "1999.12.31", "10:20", long_text, None])

    def element(depth: int) -> dict[str, Any]:
        vr = rng.choice(vrs)
        r = rng.random()
        if r < 0.08:
            return {"vr": vr}
        if r < 0.12:
            return {"vr": vr, "BulkDataURI": "bulkdata/x"}
        if r < 0.16:
            return {"vr": vr, "InlineBinary": "AAAA"}
        if r < 0.20:
            return {"vr": vr, "Value": []}
        if vr == "SQ":
            if depth > 2:
                return {"vr": vr, "Value": []}
            return {"vr": vr, "Value": [dataset(depth + 1, 4) for _ in range(rng.randrange(1, 4))]}
        return {"vr": vr, "Value": [value(vr) for _ in range(rng.choice([1, 1, 2, 16, 17, 40]))]}

    def dataset(depth: int, size: int) -> dict[str, Any]:
        return {rng.choice(tags): element(depth) for _ in range(rng.randrange(0, size))}

    for i in range(400):
        ds = dataset(0, 40)
        rng.shuffle(order := list(ds))
        check(_parsed({t: ds[t] for t in order}), object_key=str(i))


# -- caches -------------------------------------------------------------------------------------


def test_tag_place_cache_is_bounded() -> None:
    """More distinct tags than the cache holds: results unchanged, the cache stays bounded."""
    ds = {f"{g:04X}{e:04X}": _e("LO", "v") for g in (0x0008, 0x0010, 0x0018, 0x0009) for e in range(5000)}
    check(_parsed(ds))
    check(_parsed(ds))
    assert len(rows._PLACES) <= rows._PLACE_CACHE_SIZE


def test_person_name_caches_are_bounded() -> None:
    names = [f"Name{i}^Given" for i in range(normalize._PN_CACHE_SIZE + 100)] + ["É" * 300, "É" * 300]
    for name in names + names[:10]:
        assert normalize.pn_norm(name) == _reference_pn_norm(name)
        assert normalize.pn_words(name) == _reference_pn_words(name)
    assert len(normalize._PN_NORM_CACHE) <= normalize._PN_CACHE_SIZE
    assert len(normalize._PN_WORDS_CACHE) <= normalize._PN_CACHE_SIZE
    assert "É" * 300 not in normalize._PN_NORM_CACHE  # long keys are not kept


# names that differ only in a suffix, case, accents, spacing or empty groups: a cache must not mix them up
_NAMES = [
    "",
    "=",
    "^^",
    "Doe",
    "Doe^John",
    "Doe^Johnny",
    "doe^john",
    "Doé^John",
    "Doe^John ",
    "Doe^John=",
    " doe ^ john ",
]
_NAMES += [
    "Doe^John^^=",
    "Dœ^Ŝtraße",
    "홍^길동",
    "\x00^ ",
    "Yamada^Tarou=山田^太郎",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
]


@pytest.mark.parametrize("name", _NAMES)
def test_person_name_forms(name: str) -> None:
    for _ in range(2):  # computed, then cached
        assert normalize.pn_norm(name) == _reference_pn_norm(name)
        assert normalize.pn_words(name) == _reference_pn_words(name)


def test_person_name_forms_interleaved() -> None:
    for other in _NAMES * 2:  # each name cached while the others come and go
        for name in (other, *_NAMES):
            assert normalize.pn_norm(name) == _reference_pn_norm(name)
            assert normalize.pn_words(name) == _reference_pn_words(name)


def test_a_deep_sequence_chain_ending_in_a_binary_value_is_walked_once_per_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    depth = 40
    element: dict[str, Any] = {"vr": "SQ", "Value": [{"00189999": {"vr": "OB", "InlineBinary": "AAAA"}}]}
    for _ in range(depth):
        element = {"vr": "SQ", "Value": [{"00400275": element, "00100020": {"vr": "LO", "Value": ["x"]}}]}
    calls = 0
    real = normalize._is_plain_sequence

    def counting(e: dict[str, Any]) -> bool:
        nonlocal calls
        calls += 1
        return real(e)

    monkeypatch.setattr(normalize, "_is_plain_sequence", counting)
    assert normalize.keep_value(element) == _reference_keep_value(element)
    assert calls <= depth + 2  # was about depth^2 / 2: every level checked its whole subtree again
