"""QIDO parsing and search against the real index: every matching kind, responses, paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.data import get_charset_files

from dicomd.index import Index, QueryError, parse_qido
from dicomd.index.qido import MAX_LIMIT

from support.backends import BACKENDS
from support.index_rows import add, el, from_pydicom, make_parsed, open_index, pn

# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "params", "param", "fragment"),
    [
        ("study", [("Foo", "1")], "Foo", "unknown"),
        ("study", [("PatientNam", "x")], "PatientNam", "unknown"),
        ("study", [("SOPInstanceUID", "1.2")], "SOPInstanceUID", "not a searchable attribute for study"),
        ("series", [("InstanceNumber", "1")], "InstanceNumber", "not a searchable"),
        ("study", [("Rows", "512")], "Rows", "not a searchable"),
        ("study", [("PatientName", "a"), ("00100010", "b")], "00100010", "more than once"),
        ("study", [("limit", "0")], "limit", "between 1 and"),
        ("study", [("limit", str(MAX_LIMIT + 1))], "limit", "between 1 and"),
        ("study", [("limit", "ten")], "limit", "not an integer"),
        ("study", [("limit", "5"), ("limit", "6")], "limit", "more than once"),
        ("study", [("offset", "-1")], "offset", "between 0"),
        ("study", [("fuzzymatching", "yes")], "fuzzymatching", "true"),
        ("study", [("StudyDate", "2020-01-01")], "StudyDate", "not a valid range"),
        ("study", [("StudyDate", "202001011")], "StudyDate", "not a date"),
        ("study", [("StudyDate", "2020*")], "StudyDate", "wildcards"),
        ("study", [("StudyTime", "25:00")], "StudyTime", "not a time"),
        ("study", [("StudyInstanceUID", "1.2.*")], "StudyInstanceUID", "not a UID"),
        ("study", [("StudyInstanceUID", "1.2.abc")], "StudyInstanceUID", "not a UID"),
        ("series", [("SeriesNumber", "one")], "SeriesNumber", "not an integer"),
        ("study", [("includefield", "NotAKeyword")], "includefield", "unknown attribute"),
        ("study", [("ModalitiesInStudy", "CT\\M*")], "ModalitiesInStudy", "wildcards"),
    ],
)
def test_query_errors(level: Any, params: list[tuple[str, str]], param: str, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_qido(level, params)
    assert info.value.param == param
    assert param in str(info.value) and fragment in str(info.value)


def test_parse_values() -> None:
    q = parse_qido(
        "instance",
        [
            ("00100010", "doe*"),
            ("StudyInstanceUID", "1.2\\1.3,1.4"),
            ("StudyDate", "2020-"),
            ("StudyTime", "10-1230"),
            ("PatientID", ""),
            ("Modality", "*"),
            ("includefield", "00280010,Columns"),
            ("includefield", "all"),
            ("limit", "7"),
            ("offset", "3"),
            ("fuzzymatching", "TRUE"),
        ],
        partition_key=2,
        study_uid="1.2",
    )
    by_kw = {f.keyword: f for f in q.filters}
    assert by_kw["PatientName"].match == "wildcard"
    assert by_kw["StudyInstanceUID"].values == ("1.2", "1.3", "1.4")
    assert by_kw["StudyDate"].values == ("20200101", "")
    assert by_kw["StudyTime"].values == ("100000", "123059.999999")
    assert by_kw["PatientID"].match == "universal" and by_kw["Modality"].match == "universal"
    assert q.include_tags == ["00280010", "00280011"] and q.include_all
    assert (q.limit, q.offset, q.fuzzy, q.partition_key, q.study_uid) == (7, 3, True, 2, "1.2")
    assert parse_qido("study", []).limit == 100


# -- search -------------------------------------------------------------------------------------


def _corpus(idx: Index) -> None:
    a = {
        "00080050": el("SH", "ACC1"),
        "00081030": el("LO", "Brain MRI"),
        "00080090": pn("Smith^Anna"),
        "00100030": el("DA", "19700101"),
        "00100040": el("CS", "M"),
        "00200010": el("SH", "S1"),
    }
    b = {
        "00080050": el("SH", "ACC_2"),
        "00081030": el("LO", "Chest 50% CT"),
        "00100030": el("DA", "19800615"),
        "00100040": el("CS", "F"),
        "00180015": el("CS", "CHEST"),
        "00081090": el("LO", "Scanner X"),
        "00400244": el("DA", "20201231"),
    }
    add(
        idx,
        make_parsed("1.1", "1.1.1", "1.1.1.1", modality="MR", series_number=1, instance_number=1, extra=a),
        make_parsed("1.1", "1.1.1", "1.1.1.2", modality="MR", series_number=1, instance_number=2, extra=a),
        make_parsed("1.1", "1.1.2", "1.1.2.1", modality="CT", series_number=2, instance_number=1, extra=a),
        make_parsed(
            "1.2",
            "1.2.1",
            "1.2.1.1",
            patient_name="Müller^Jérôme",
            patient_id="P2",
            study_date="20201231",
            study_time="235959.5",
            modality="CT",
            sop_class="1.2.840.10008.5.1.4.1.1.4",
            extra=b,
        ),
        make_parsed(
            "1.3",
            "1.3.1",
            "1.3.1.1",
            patient_name=pn("Yamada^Tarou", "山田^太郎", "やまだ^たろう"),
            patient_id="p1",
            study_date="20210601",
            study_time=None,
            modality="US",
        ),
    )


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    # read-only tests share one populated index per backend (keeps the suite fast)
    with open_index(request.param, tmp_path_factory.mktemp("corpus")) as idx:
        _corpus(idx)
        yield idx


def _uids(idx: Index, level: Any, params: list[tuple[str, str]], **kw: Any) -> list[str]:
    tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
    return [r[tag]["Value"][0] for r in idx.search(parse_qido(level, params, **kw))]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], ["1.1", "1.2", "1.3"]),
        ([("PatientID", "P1")], ["1.1"]),  # exact and case-sensitive
        ([("PatientID", "")], ["1.1", "1.2", "1.3"]),  # universal
        ([("PatientID", "*")], ["1.1", "1.2", "1.3"]),
        ([("PatientID", "P?")], ["1.1", "1.2"]),
        ([("PatientID", "?1")], ["1.1", "1.3"]),
        ([("AccessionNumber", "ACC_2")], ["1.2"]),
        ([("AccessionNumber", "ACC_*")], ["1.2"]),  # '_' is literal, not a LIKE wildcard
        ([("StudyDescription", "*50%*")], ["1.2"]),  # '%' is literal
        ([("StudyDescription", "*5%*")], []),
        ([("StudyDescription", "brain*")], []),  # case-sensitive
        ([("StudyDescription", "Brain*")], ["1.1"]),
        ([("StudyInstanceUID", "1.3\\1.1")], ["1.1", "1.3"]),  # UID list
        ([("StudyInstanceUID", "1.2,1.3")], ["1.2", "1.3"]),
        ([("0020000D", "1.2")], ["1.2"]),
        ([("StudyDate", "20201231")], ["1.2"]),
        ([("StudyDate", "20200101-20201231")], ["1.1", "1.2"]),
        ([("StudyDate", "-20200115")], ["1.1"]),
        ([("StudyDate", "20201231-")], ["1.2", "1.3"]),
        ([("StudyDate", "2021")], ["1.3"]),  # partial date: the whole year
        ([("StudyDate", "202012-202106")], ["1.2", "1.3"]),
        ([("StudyTime", "1015")], ["1.1"]),  # 10:15:00-10:15:59.999999
        ([("StudyTime", "10-")], ["1.1", "1.2"]),
        ([("StudyTime", "-2358")], ["1.1"]),
        ([("StudyTime", "-2359")], ["1.1", "1.2"]),  # the upper bound includes the whole minute
        ([("StudyTime", "235959")], ["1.2"]),
        ([("PatientBirthDate", "19700101-19751231")], ["1.1"]),
        ([("PatientSex", "F")], ["1.2"]),
        ([("StudyID", "S1")], ["1.1"]),
        ([("ModalitiesInStudy", "CT")], ["1.1", "1.2"]),
        ([("ModalitiesInStudy", "US\\MR")], ["1.1", "1.3"]),
        ([("ModalitiesInStudy", "M?")], ["1.1"]),
        ([("ModalitiesInStudy", "XA")], []),
        ([("PatientName", "doe^john")], ["1.1"]),  # exact, case-insensitive
        ([("PatientName", "DOE^JOHN^^")], ["1.1"]),
        ([("PatientName", "Doe")], []),  # exact match is the whole name
        ([("PatientName", "muller^jerome")], ["1.2"]),  # accent-insensitive
        ([("PatientName", "MÜLLER^JÉRÔME")], ["1.2"]),
        ([("PatientName", "山田^太郎")], ["1.3"]),  # any component group
        ([("PatientName", "やまだ^たろう")], ["1.3"]),
        ([("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう")], ["1.3"]),
        ([("PatientName", "D*")], ["1.1"]),
        ([("PatientName", "*^J*")], ["1.1", "1.2"]),
        ([("PatientName", "山田*")], ["1.3"]),
        ([("ReferringPhysicianName", "SMITH^anna")], ["1.1"]),
        ([("PatientID", "P1"), ("StudyDate", "2020")], ["1.1"]),  # filters combine with AND
    ],
)
def test_study_matching(corpus: Index, params: list[tuple[str, str]], expected: list[str]) -> None:
    assert _uids(corpus, "study", params) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("jo", ["1.1"]),  # word prefix of JOHN
        ("doe", ["1.1"]),
        ("john doe", ["1.1"]),
        ("jer", ["1.2"]),
        ("jér", ["1.2"]),
        ("mul", ["1.2"]),
        ("ohn", []),  # prefix, not substring
        ("tar", ["1.3"]),
        ("太", ["1.3"]),
        ("やま", ["1.3"]),
        ("Doe^Jo", ["1.1"]),
        ("doe mul", []),  # every word must match
    ],
)
def test_fuzzy_names(corpus: Index, value: str, expected: list[str]) -> None:
    assert _uids(corpus, "study", [("PatientName", value), ("fuzzymatching", "true")]) == expected


def test_fuzzy_names_from_charset_files(index: Index) -> None:
    files = ["chrH31.dcm", "chrI2.dcm", "chrFren.dcm", "chrGerm.dcm", "chrX1.dcm", "chrKoreanMulti.dcm"]
    parsed = {name: from_pydicom(get_charset_files(name)[0]) for name in files}
    add(index, *parsed.values())

    def find(value: str, fuzzy: bool = True) -> set[str]:
        params = [("PatientName", value), ("fuzzymatching", "true" if fuzzy else "false")]
        uids = _uids(index, "study", params)
        return {n for n, p in parsed.items() if p.study_instance_uid in uids}

    assert find("yamada") == {"chrH31.dcm"}
    assert find("山田") == {"chrH31.dcm"}
    assert find("たろ") == {"chrH31.dcm"}
    assert find("홍") == {"chrI2.dcm"}
    assert find("길동") == {"chrI2.dcm"}
    assert find("洪^吉") == {"chrI2.dcm"}
    assert find("gil") == {"chrI2.dcm"}
    assert find("김희") == {"chrKoreanMulti.dcm"}
    assert find("jerome") == {"chrFren.dcm"}
    assert find("BUC^JÉRÔME", fuzzy=False) == {"chrFren.dcm"}
    assert find("aneas rudi") == {"chrGerm.dcm"}
    assert find("王") == {"chrX1.dcm"}
    assert find("小東") == {"chrX1.dcm"}
    assert find("홍^길동", fuzzy=False) == {"chrI2.dcm"}


@pytest.mark.parametrize(
    ("level", "params", "expected"),
    [
        ("series", [("Modality", "CT")], ["1.1.2", "1.2.1"]),
        ("series", [("Modality", "CT\\US")], ["1.1.2", "1.2.1", "1.3.1"]),
        ("series", [("SeriesNumber", "2")], ["1.1.2"]),
        ("series", [("SeriesInstanceUID", "1.2.1\\1.3.1")], ["1.2.1", "1.3.1"]),
        ("series", [("PatientID", "P1")], ["1.1.1", "1.1.2"]),  # study attribute at series level
        ("series", [("PatientName", "muller*")], ["1.2.1"]),
        ("series", [("BodyPartExamined", "CHEST")], ["1.2.1"]),
        ("series", [("ManufacturerModelName", "Scanner*")], ["1.2.1"]),
        ("series", [("PerformedProcedureStepStartDate", "2020")], ["1.2.1"]),
        ("series", [("ModalitiesInStudy", "US")], ["1.3.1"]),
        ("instance", [("InstanceNumber", "2")], ["1.1.1.2"]),
        ("instance", [("SOPClassUID", "1.2.840.10008.5.1.4.1.1.4")], ["1.2.1.1"]),
        ("instance", [("SOPInstanceUID", "1.1.1.1,1.3.1.1")], ["1.1.1.1", "1.3.1.1"]),
        ("instance", [("Modality", "MR")], ["1.1.1.1", "1.1.1.2"]),
        ("instance", [("StudyDate", "2020")], ["1.1.1.1", "1.1.1.2", "1.1.2.1", "1.2.1.1"]),
    ],
)
def test_series_instance_matching(
    corpus: Index, level: Any, params: list[tuple[str, str]], expected: list[str]
) -> None:
    assert _uids(corpus, level, params) == expected


def test_scoped_searches(corpus: Index) -> None:
    assert _uids(corpus, "series", [], study_uid="1.1") == ["1.1.1", "1.1.2"]
    assert _uids(corpus, "series", [], study_uid="9.9") == []
    assert _uids(corpus, "instance", [], study_uid="1.1") == ["1.1.1.1", "1.1.1.2", "1.1.2.1"]
    assert _uids(corpus, "instance", [], study_uid="1.1", series_uid="1.1.2") == ["1.1.2.1"]
    assert _uids(corpus, "instance", [("Modality", "CT")], study_uid="1.1") == ["1.1.2.1"]
    assert _uids(corpus, "study", [], partition_key=2) == []


def test_study_response(corpus: Index) -> None:
    [r] = corpus.search(parse_qido("study", [("PatientID", "P1")]))
    assert r["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert r["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert r["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert r["00201206"] == {"vr": "IS", "Value": [2]}
    assert r["00201208"] == {"vr": "IS", "Value": [3]}
    assert r["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}
    assert r["00080090"]["Value"] == [{"Alphabetic": "Smith^Anna"}]
    assert r["00080201"] == {"vr": "SH"}  # default attribute without a value: present, empty
    assert "0020000E" not in r and "00080060" not in r and "00280010" not in r
    assert list(r) == sorted(r)


def test_series_and_instance_responses(corpus: Index) -> None:
    series = corpus.search(parse_qido("series", [("Modality", "MR")]))
    assert len(series) == 1
    s = series[0]
    assert s["00201209"] == {"vr": "IS", "Value": [2]}
    assert s["00200011"] == {"vr": "IS", "Value": [1]}
    assert s["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]  # study attributes: not scoped
    assert s["00080061"]["Value"] == ["CT", "MR"]
    [scoped] = corpus.search(parse_qido("series", [("Modality", "MR")], study_uid="1.1"))
    assert "00100010" not in scoped and scoped["0020000D"]["Value"] == ["1.1"]

    [i] = corpus.search(parse_qido("instance", [("InstanceNumber", "2")]))
    assert i["00080018"]["Value"] == ["1.1.1.2"]
    assert i["0020000E"]["Value"] == ["1.1.1"] and i["0020000D"]["Value"] == ["1.1"]
    assert i["00280010"] == {"vr": "US", "Value": [4]}
    assert i["00080060"]["Value"] == ["MR"] and i["00100020"]["Value"] == ["P1"]
    assert i["00200013"]["Value"] == [2]
    assert "7FE00010" not in i
    [si] = corpus.search(
        parse_qido("instance", [("InstanceNumber", "2")], study_uid="1.1", series_uid="1.1.1")
    )
    assert "00100020" not in si and "00080060" not in si and "0020000E" in si


def test_includefield(corpus: Index) -> None:
    [r] = corpus.search(
        parse_qido(
            "study",
            [
                ("StudyInstanceUID", "1.2"),
                ("includefield", "00100030,PatientSex"),
                ("includefield", "00181030"),
            ],
        )
    )
    assert r["00100030"]["Value"] == ["19800615"] and r["00100040"]["Value"] == ["F"]
    assert r["00181030"] == {"vr": "LO"}  # requested, unknown at this level: empty
    [s] = corpus.search(parse_qido("series", [("includefield", "PatientBirthDate")], study_uid="1.2"))
    assert s["00100030"]["Value"] == ["19800615"]  # higher-level attribute on request


def test_includefield_all(corpus: Index) -> None:
    [r] = corpus.search(parse_qido("study", [("StudyInstanceUID", "1.2"), ("includefield", "all")]))
    assert r["00081030"]["Value"] == ["Chest 50% CT"]
    assert r["00201208"]["Value"] == [1]
    assert r["00080005"]["Value"] == ["ISO_IR 192"]
    assert "00080060" not in r  # series attributes stay out of study results
    [i] = corpus.search(parse_qido("instance", [("SOPInstanceUID", "1.2.1.1"), ("includefield", "all")]))
    assert i["00081090"]["Value"] == ["Scanner X"] and i["00100020"]["Value"] == ["P2"]
    assert i["00280100"]["Value"] == [16] and i["00201209"]["Value"] == [1]
    assert "7FE00010" not in i


def test_matching_keys_are_returned(corpus: Index) -> None:
    [r] = corpus.search(parse_qido("study", [("StudyID", "S1"), ("PatientBirthDate", "")]))
    assert r["00200010"]["Value"] == ["S1"] and r["00100030"]["Value"] == ["19700101"]


def test_limit_offset_stable(index: Index) -> None:
    items = [make_parsed(f"2.{n}", f"2.{n}.1", f"2.{n}.1.1", patient_id=f"P{n % 3}") for n in range(25)]
    add(index, *items)
    pages = []
    for offset in range(0, 25, 7):
        pages += _uids(index, "study", [("limit", "7"), ("offset", str(offset))])
    assert pages == _uids(index, "study", [("limit", "100")])
    assert len(pages) == 25 and len(set(pages)) == 25
    assert _uids(index, "study", [("offset", "25")]) == []
    p0 = _uids(index, "study", [("PatientID", "P0"), ("limit", "3")])
    p1 = _uids(index, "study", [("PatientID", "P0"), ("limit", "3"), ("offset", "3")])
    assert len(p0) == 3 and len(p1) == 3 and not set(p0) & set(p1)
    assert len(_uids(index, "instance", [("limit", "10"), ("offset", "20")])) == 5
