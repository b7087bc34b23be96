"""QIDO-RS end to end (PS3.18 10.6, PS3.4 C.2.2.2 matching) on a small archive of known studies.

All queries are scoped to this module's patients with ``PatientID=<prefix>*`` so that data other tests
store on the shared server never shows up.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid

from support.dicom_files import CHARSET_FILES, make_instance, new_uid
from support.dicomweb import stow, unique_id, value, values
from support.server import Server

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Archive:
    prefix: str
    study: dict[str, str] = field(default_factory=dict)  # label -> StudyInstanceUID
    series: dict[str, str] = field(default_factory=dict)  # label -> SeriesInstanceUID
    sop: dict[str, str] = field(default_factory=dict)  # label -> SOPInstanceUID
    accession: dict[str, str] = field(default_factory=dict)

    def label(self, kind: str, uid: str) -> str:
        table = {"study": self.study, "series": self.series, "sop": self.sop}[kind]
        return next(k for k, v in table.items() if v == uid)


STUDIES: dict[str, dict[str, Any]] = {
    "S1": dict(
        patient="A",
        PatientName="Müller^Jürgen",
        PatientBirthDate="19600515",
        PatientSex="M",
        StudyDate="20200110",
        StudyTime="081500",
        ReferringPhysicianName="House^Gregory",
        StudyID="STUDY1",
        StudyDescription="Chest CT",
        AdditionalPatientHistory="smoker",
    ),
    "S2": dict(
        patient="A",
        PatientName="Smith^Anna",
        PatientBirthDate="19800101",
        PatientSex="F",
        StudyDate="20210615",
        StudyTime="143000",
        ReferringPhysicianName="Wilson^James",
        StudyID="STUDY2",
        StudyDescription="Brain MR",
    ),
    "S3": dict(
        patient="B",
        PatientName="O'Brien^Seán",
        PatientBirthDate="19991231",
        PatientSex="O",
        StudyDate="20211231",
        StudyTime="235959",
        ReferringPhysicianName="Müller^Hans",
        StudyID="STUDY3",
        StudyDescription="Chest CT follow-up",
    ),
}
# series label -> (study label, attributes, number of instances)
SERIES: dict[str, tuple[str, dict[str, Any], int]] = {
    "S1a": (
        "S1",
        dict(
            modality="CT",
            SeriesNumber=1,
            SeriesDescription="Axial",
            PerformedProcedureStepStartDate="20200110",
            PerformedProcedureStepStartTime="081600",
            BodyPartExamined="CHEST",
            ManufacturerModelName="Revolution",
        ),
        3,
    ),
    "S1b": (
        "S1",
        dict(
            modality="SR",
            SeriesNumber=2,
            SeriesDescription="Report",
            PerformedProcedureStepStartDate="20200111",
            PerformedProcedureStepStartTime="120000",
            BodyPartExamined="CHEST",
            ManufacturerModelName="Reporter",
            SOPClassUID=SR_CLASS,
        ),
        1,
    ),
    "S2a": (
        "S2",
        dict(
            modality="MR",
            SeriesNumber=1,
            SeriesDescription="T1 sag",
            PerformedProcedureStepStartDate="20210615",
            PerformedProcedureStepStartTime="143100",
            BodyPartExamined="HEAD",
            ManufacturerModelName="Signa",
        ),
        2,
    ),
    "S3a": (
        "S3",
        dict(
            modality="CT",
            SeriesNumber=3,
            SeriesDescription="Axial",
            PerformedProcedureStepStartDate="20211231",
            PerformedProcedureStepStartTime="235900",
            BodyPartExamined="CHEST",
            ManufacturerModelName="Revolution",
        ),
        1,
    ),
    "S3b": (
        "S3",
        dict(
            modality="PT",
            SeriesNumber=4,
            SeriesDescription="Whole body",
            PerformedProcedureStepStartDate="20220101",
            PerformedProcedureStepStartTime="000100",
            BodyPartExamined="WHOLEBODY",
            ManufacturerModelName="Biograph",
        ),
        1,
    ),
}


@pytest.fixture(scope="module")
def archive(server: Server) -> Archive:
    arch = Archive(prefix=f"Q{uuid.uuid4().hex[:12]}")
    for label in STUDIES:
        arch.study[label] = new_uid()
        arch.accession[label] = f"ACC{label}-{uuid.uuid4().hex[:6]}"
    parts = []
    for s_label, (study_label, attrs, count) in SERIES.items():
        arch.series[s_label] = new_uid()
        study_attrs = dict(STUDIES[study_label])
        patient = f"{arch.prefix}-{study_attrs.pop('patient')}"
        patient_name = study_attrs.pop("PatientName")
        for n in range(1, count + 1):
            i_label = f"{s_label}-{n}"
            arch.sop[i_label] = new_uid()
            parts.append(
                make_instance(
                    study=arch.study[study_label],
                    series=arch.series[s_label],
                    sop=arch.sop[i_label],
                    patient_id=patient,
                    patient_name=patient_name,
                    AccessionNumber=arch.accession[study_label],
                    InstanceNumber=n,
                    **study_attrs,
                    **attrs,
                )
            )
    with httpx.Client(base_url=server.v2, timeout=30) as c:
        r = stow(c, parts)
        assert r.status_code == 200, r.text
    return arch


@pytest.fixture
def q(client: httpx.Client, archive: Archive) -> Iterator[Any]:
    def query(path: str, scoped: bool = True, **params: str) -> list[dict[str, Any]]:
        if scoped:
            params.setdefault("PatientID", f"{archive.prefix}*")
        r = client.get(path, params=params)
        assert r.status_code == 200, (path, params, r.text)
        assert r.headers["content-type"].startswith("application/dicom+json")
        result: list[dict[str, Any]] = r.json()
        return result

    yield query


def labels(archive: Archive, results: list[dict[str, Any]], kind: str) -> set[str]:
    tag = {"study": "0020000D", "series": "0020000E", "sop": "00080018"}[kind]
    found = [archive.label(kind, value(r, tag)) for r in results]
    assert len(found) == len(set(found)), f"duplicates in {found}"
    return set(found)


# ---- study level --------------------------------------------------------------------------------

STUDY_CASES: list[tuple[str, str, set[str]]] = [
    ("StudyDate", "20200110", {"S1"}),
    ("StudyDate", "20210101-20211231", {"S2", "S3"}),
    ("StudyDate", "-20201231", {"S1"}),
    ("StudyDate", "20210616-", {"S3"}),
    ("00080020", "20210615", {"S2"}),
    ("StudyTime", "080000-090000", {"S1"}),
    ("StudyTime", "140000-", {"S2", "S3"}),
    ("StudyTime", "-100000", {"S1"}),
    ("StudyTime", "235959", {"S3"}),
    ("ModalitiesInStudy", "SR", {"S1"}),
    ("ModalitiesInStudy", "CT", {"S1", "S3"}),
    ("ModalitiesInStudy", "MR,PT", {"S2", "S3"}),
    ("ModalitiesInStudy", "MR\\SR", {"S1", "S2"}),
    ("00080061", "PT", {"S3"}),
    ("ReferringPhysicianName", "Wilson^James", {"S2"}),
    ("ReferringPhysicianName", "wilson^james", {"S2"}),
    ("ReferringPhysicianName", "Hou*", {"S1"}),
    ("00080090", "House^Gregory", {"S1"}),
    ("PatientName", "Smith^Anna", {"S2"}),
    ("PatientName", "SMITH^ANNA", {"S2"}),
    ("PatientName", "Sm*", {"S2"}),
    ("PatientName", "sm?th^anna", {"S2"}),
    ("PatientName", "*^Anna", {"S2"}),
    ("PatientName", "Muller^Jurgen", {"S1"}),
    ("PatientName", "müller^jürgen", {"S1"}),
    ("PatientName", "Smith", set()),
    ("00100010", "O'Brien^Seán", {"S3"}),
    ("PatientBirthDate", "19600101-19700101", {"S1"}),
    ("PatientBirthDate", "19991231", {"S3"}),
    ("00100030", "-19850101", {"S1", "S2"}),
    ("PatientSex", "F", {"S2"}),
    ("PatientSex", "M,O", {"S1", "S3"}),
    ("00100040", "O", {"S3"}),
    ("StudyID", "STUDY3", {"S3"}),
    ("StudyID", "STUDY?", {"S1", "S2", "S3"}),
    ("00200010", "STUDY2", {"S2"}),
    ("StudyDescription", "Chest CT", {"S1"}),
    ("StudyDescription", "Chest*", {"S1", "S3"}),
    ("StudyDescription", "*MR", {"S2"}),
    ("00081030", "Brain MR", {"S2"}),
    ("StudyDescription", "*", {"S1", "S2", "S3"}),
    ("StudyDescription", "", {"S1", "S2", "S3"}),
]


@pytest.mark.parametrize(("key", "match", "expected"), STUDY_CASES)
def test_search_studies_by_key(q: Any, archive: Archive, key: str, match: str, expected: set[str]) -> None:
    results = q("/studies", **{key: match})
    assert labels(archive, results, "study") == expected
    tag = key if key[0].isdigit() else f"{tag_for_keyword(key):08X}"
    for r in results:  # the matching key is returned
        assert tag in r


def test_search_studies_by_uid_and_accession(q: Any, archive: Archive) -> None:
    s1, s2, s3 = archive.study["S1"], archive.study["S2"], archive.study["S3"]
    assert labels(archive, q("/studies", StudyInstanceUID=s2), "study") == {"S2"}
    assert labels(archive, q("/studies", **{"0020000D": s2}), "study") == {"S2"}
    assert labels(archive, q("/studies", StudyInstanceUID=f"{s1},{s3}"), "study") == {"S1", "S3"}
    assert labels(archive, q("/studies", StudyInstanceUID=f"{s1}\\{s3}"), "study") == {"S1", "S3"}
    assert labels(archive, q("/studies", StudyInstanceUID=f"{s1},{new_uid()}"), "study") == {"S1"}
    assert labels(archive, q("/studies", AccessionNumber=archive.accession["S3"]), "study") == {"S3"}
    assert labels(archive, q("/studies", **{"00080050": archive.accession["S1"]}), "study") == {"S1"}
    acc = archive.accession["S2"]
    assert labels(archive, q("/studies", AccessionNumber=acc[:-1] + "?"), "study") == {"S2"}
    assert labels(archive, q("/studies", AccessionNumber=acc[:6] + "*"), "study") == {"S2"}


def test_search_studies_by_patient_id(q: Any, archive: Archive) -> None:
    a, b = f"{archive.prefix}-A", f"{archive.prefix}-B"
    assert labels(archive, q("/studies", scoped=False, PatientID=a), "study") == {"S1", "S2"}
    assert labels(archive, q("/studies", scoped=False, **{"00100020": b}), "study") == {"S3"}
    assert labels(archive, q("/studies", scoped=False, PatientID=f"{archive.prefix}-?"), "study") == {
        "S1",
        "S2",
        "S3",
    }
    # string matching other than PN is case-sensitive (PS3.4 C.2.2.2.1)
    assert q("/studies", scoped=False, PatientID=a.lower()) == []


def test_study_result_attributes_and_computed_counts(q: Any, archive: Archive, server: Server) -> None:
    [s1] = q("/studies", StudyInstanceUID=archive.study["S1"])
    assert value(s1, "00201206") == 2  # NumberOfStudyRelatedSeries
    assert value(s1, "00201208") == 4  # NumberOfStudyRelatedInstances
    assert sorted(values(s1, "00080061")) == ["CT", "SR"]  # ModalitiesInStudy
    assert value(s1, "00100010") == {"Alphabetic": "Müller^Jürgen"}
    assert value(s1, "00100020") == f"{archive.prefix}-A"
    assert value(s1, "00080020") == "20200110"
    assert value(s1, "00081190") == f"{server.v2}/studies/{archive.study['S1']}"
    [s3] = q("/studies", StudyInstanceUID=archive.study["S3"])
    assert (value(s3, "00201206"), value(s3, "00201208")) == (2, 2)
    assert sorted(values(s3, "00080061")) == ["CT", "PT"]
    # computed attributes asked for explicitly, by keyword and by tag
    [s2] = q(
        "/studies",
        StudyInstanceUID=archive.study["S2"],
        includefield="NumberOfStudyRelatedSeries,00201208,ModalitiesInStudy",
    )
    assert (value(s2, "00201206"), value(s2, "00201208"), values(s2, "00080061")) == (1, 2, ["MR"])


def test_includefield(q: Any, client: httpx.Client, archive: Archive) -> None:
    study = archive.study["S1"]
    [plain] = q("/studies", StudyInstanceUID=study)
    assert "001021B0" not in plain  # AdditionalPatientHistory is not a default attribute
    for include in ("AdditionalPatientHistory", "001021B0", "all"):
        [r] = q("/studies", StudyInstanceUID=study, includefield=include)
        assert value(r, "001021B0") == "smoker", include
    r = q("/series", SeriesInstanceUID=archive.series["S1a"], includefield="all")[0]
    assert value(r, "00180015") == "CHEST"
    r = q("/instances", SOPInstanceUID=archive.sop["S1a-2"], includefield="Rows,00280011")[0]
    assert (value(r, "00280010"), value(r, "00280011")) == (8, 8)
    # includefield may be repeated
    params = [
        ("StudyInstanceUID", study),
        ("includefield", "AdditionalPatientHistory"),
        ("includefield", "00081030"),
    ]
    [r] = client.get("/studies", params=params).json()
    assert value(r, "001021B0") == "smoker"
    assert value(r, "00081030") == "Chest CT"


def test_fuzzy_matching_is_word_prefix_case_and_accent_insensitive(q: Any, archive: Archive) -> None:
    def fuzzy(**params: str) -> set[str]:
        return labels(archive, q("/studies", fuzzymatching="true", **params), "study")

    assert fuzzy(PatientName="muller") == {"S1"}
    assert fuzzy(PatientName="jur") == {"S1"}
    assert fuzzy(PatientName="MÜLL") == {"S1"}
    assert fuzzy(PatientName="sean") == {"S3"}
    assert fuzzy(PatientName="anna smi") == {"S2"}
    assert fuzzy(PatientName="ller") == set()  # prefix of a word, not any substring
    assert fuzzy(ReferringPhysicianName="muller") == {"S3"}
    assert fuzzy(ReferringPhysicianName="greg") == {"S1"}
    # without fuzzymatching a bare family name is not a match
    assert labels(archive, q("/studies", PatientName="muller"), "study") == set()
    assert labels(archive, q("/studies", fuzzymatching="false", PatientName="jur"), "study") == set()


# ---- series level -------------------------------------------------------------------------------

SERIES_CASES: list[tuple[str, str, set[str]]] = [
    ("Modality", "CT", {"S1a", "S3a"}),
    ("00080060", "MR", {"S2a"}),
    ("Modality", "SR,PT", {"S1b", "S3b"}),
    ("SeriesNumber", "2", {"S1b"}),
    ("00200011", "3", {"S3a"}),
    ("SeriesDescription", "Axial", {"S1a", "S3a"}),
    ("SeriesDescription", "T1*", {"S2a"}),
    ("0008103E", "Whole body", {"S3b"}),
    ("PerformedProcedureStepStartDate", "20200110-20200111", {"S1a", "S1b"}),
    ("PerformedProcedureStepStartDate", "20211231-", {"S3a", "S3b"}),
    ("00400244", "-20200110", {"S1a"}),
    ("PerformedProcedureStepStartTime", "080000-130000", {"S1a", "S1b"}),
    ("00400245", "000100", {"S3b"}),
    ("BodyPartExamined", "HEAD", {"S2a"}),
    ("BodyPartExamined", "CHEST", {"S1a", "S1b", "S3a"}),
    ("00180015", "WHOLEBODY", {"S3b"}),
    ("ManufacturerModelName", "Revolution", {"S1a", "S3a"}),
    ("00081090", "Sig*", {"S2a"}),
    # study-level keys are allowed in series searches
    ("StudyDate", "20210615", {"S2a"}),
    ("PatientName", "o'brien*", {"S3a", "S3b"}),
]


@pytest.mark.parametrize(("key", "match", "expected"), SERIES_CASES)
def test_search_series_by_key(q: Any, archive: Archive, key: str, match: str, expected: set[str]) -> None:
    assert labels(archive, q("/series", **{key: match}), "series") == expected


def test_search_series_by_uid_and_within_study(q: Any, archive: Archive, server: Server) -> None:
    a, b = archive.series["S1a"], archive.series["S2a"]
    assert labels(archive, q("/series", SeriesInstanceUID=a), "series") == {"S1a"}
    assert labels(archive, q("/series", **{"0020000E": f"{a}\\{b}"}), "series") == {"S1a", "S2a"}
    s1 = archive.study["S1"]
    results = q(f"/studies/{s1}/series")
    assert labels(archive, results, "series") == {"S1a", "S1b"}
    assert labels(archive, q(f"/studies/{s1}/series", Modality="SR"), "series") == {"S1b"}
    [r] = q(f"/studies/{s1}/series", SeriesInstanceUID=a)
    assert value(r, "00201209") == 3  # NumberOfSeriesRelatedInstances
    assert value(r, "00080060") == "CT"
    assert value(r, "00081190") == f"{server.v2}/studies/{s1}/series/{a}"
    assert q(f"/studies/{new_uid()}/series") == []


# ---- instance level -----------------------------------------------------------------------------


def test_search_instances(q: Any, archive: Archive, server: Server) -> None:
    def found(path: str, **params: str) -> set[str]:
        return labels(archive, q(path, **params), "sop")

    assert found("/instances", SOPClassUID=SR_CLASS) == {"S1b-1"}
    assert found("/instances", **{"00080016": CT_CLASS}, Modality="MR") == {"S2a-1", "S2a-2"}
    assert found("/instances", SOPInstanceUID=archive.sop["S1a-2"]) == {"S1a-2"}
    pair = f"{archive.sop['S1a-1']},{archive.sop['S3b-1']}"
    assert found("/instances", **{"00080018": pair}) == {"S1a-1", "S3b-1"}
    assert found("/instances", InstanceNumber="2") == {"S1a-2", "S2a-2"}
    assert found("/instances", **{"00200013": "3"}) == {"S1a-3"}
    assert found("/instances", StudyDescription="Brain MR") == {"S2a-1", "S2a-2"}
    assert len(found("/instances")) == 8
    s1, s1a = archive.study["S1"], archive.series["S1a"]
    assert found(f"/studies/{s1}/instances") == {"S1a-1", "S1a-2", "S1a-3", "S1b-1"}
    assert found(f"/studies/{s1}/series/{s1a}/instances") == {"S1a-1", "S1a-2", "S1a-3"}
    assert found(f"/studies/{s1}/series/{s1a}/instances", InstanceNumber="1") == {"S1a-1"}
    [r] = q(f"/studies/{s1}/series/{s1a}/instances", InstanceNumber="3")
    sop = archive.sop["S1a-3"]
    assert value(r, "00081190") == f"{server.v2}/studies/{s1}/series/{s1a}/instances/{sop}"
    assert value(r, "00080016") == CT_CLASS
    assert value(r, "00200013") == 3


# ---- paging -------------------------------------------------------------------------------------


def test_limit_offset_paging_is_stable(client: httpx.Client) -> None:
    patient = unique_id("PAGE")
    study = new_uid()
    parts = [make_instance(study=study if i < 5 else None, patient_id=patient) for i in range(13)]
    assert stow(client, parts).status_code == 200
    for path, total in (("/studies", 9), ("/series", 13), ("/instances", 13)):
        seen: list[str] = []
        sizes = []
        offset = 0
        while True:
            r = client.get(path, params={"PatientID": patient, "limit": 4, "offset": offset})
            assert r.status_code == 200
            page = r.json()
            sizes.append(len(page))
            seen += [r_["00081190"]["Value"][0] for r_ in page]
            if len(page) < 4:
                break
            offset += 4
        assert len(seen) == len(set(seen)) == total, (path, sizes)
        assert sizes[:-1] == [4] * (len(sizes) - 1)
        # the same page twice gives the same answer
        again = [
            r_["00081190"]["Value"][0]
            for r_ in client.get(path, params={"PatientID": patient, "limit": 4, "offset": 4}).json()
        ]
        assert again == seen[4:8]
        # an offset past the end is an empty 200
        r = client.get(path, params={"PatientID": patient, "offset": 1000})
        assert (r.status_code, r.json()) == (200, [])


# ---- errors and empty results -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/studies", {"Foo": "1"}, "Foo"),
        ("/studies", {"NotAKeyword": "x"}, "NotAKeyword"),
        ("/studies", {"StudyDate": "2020-13"}, "StudyDate"),
        ("/studies", {"StudyDate": "yesterday"}, "StudyDate"),
        ("/studies", {"StudyDate": "2020*"}, "StudyDate"),
        ("/studies", {"PatientBirthDate": "1960-1970-1980"}, "PatientBirthDate"),
        ("/studies", {"StudyTime": "25h"}, "StudyTime"),
        ("/studies", {"StudyInstanceUID": "1.2.abc"}, "StudyInstanceUID"),
        ("/series", {"SeriesNumber": "one"}, "SeriesNumber"),
        ("/instances", {"InstanceNumber": "1.5"}, "InstanceNumber"),
        ("/studies", {"limit": "0"}, "limit"),
        ("/studies", {"limit": "-1"}, "limit"),
        ("/studies", {"limit": "abc"}, "limit"),
        ("/studies", {"limit": "100000"}, "limit"),
        ("/studies", {"offset": "-5"}, "offset"),
        ("/studies", {"offset": "x"}, "offset"),
        ("/studies", {"fuzzymatching": "maybe"}, "fuzzymatching"),
        ("/studies", {"includefield": "NoSuchAttribute"}, "includefield"),
        ("/studies", {"SOPInstanceUID": "1.2.3"}, "SOPInstanceUID"),
        ("/studies", {"Modality": "CT"}, "Modality"),
        ("/series", {"InstanceNumber": "1"}, "InstanceNumber"),
        ("/studies", {"00100010": "x", "PatientName": "y"}, "PatientName"),
    ],
)
def test_bad_query_is_400_naming_the_parameter(
    client: httpx.Client, path: str, params: dict[str, str], named: str
) -> None:
    r = client.get(path, params=params)
    assert r.status_code == 400, (params, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert named in r.json()["message"], r.text


def test_empty_result_is_200_with_empty_array(client: httpx.Client) -> None:
    for path in ("/studies", "/series", "/instances"):
        r = client.get(path, params={"PatientID": unique_id("NOBODY")})
        assert r.status_code == 200
        assert r.json() == []
        assert r.headers["content-type"].startswith("application/dicom+json")
    r = client.get(f"/studies/{new_uid()}/instances")
    assert (r.status_code, r.json()) == (200, [])


# ---- character sets -----------------------------------------------------------------------------


def _copy_with_new_ids(name: str, patient: str) -> bytes:
    """A bundled charset file with fresh UIDs and PatientID; the name elements keep their original bytes."""
    ds = pydicom.dcmread(CHARSET_FILES / name)
    sop = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = patient
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


CHARSET_NAMES = ["chrH31.dcm", "chrH32.dcm", "chrI2.dcm", "chrKoreanMulti.dcm", "chrX1.dcm", "chrX2.dcm"]


@pytest.fixture(scope="module")
def charset_archive(server: Server) -> str:
    prefix = f"CS{uuid.uuid4().hex[:12]}"
    parts = [_copy_with_new_ids(name, f"{prefix}-{name}") for name in CHARSET_NAMES]
    with httpx.Client(base_url=server.v2, timeout=30) as c:
        r = stow(c, parts)
        assert r.status_code in (200, 202), r.text
        assert len(r.json()["00081199"]["Value"]) == len(parts)
    return prefix


@pytest.mark.parametrize(
    ("name", "fuzzy", "expected"),
    [
        ("山田^太郎", False, {"chrH31.dcm", "chrH32.dcm"}),
        ("やまだ^たろう", False, {"chrH31.dcm", "chrH32.dcm"}),
        ("Yamada^Tarou", False, {"chrH31.dcm"}),
        ("yamada^tarou", False, {"chrH31.dcm"}),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", False, {"chrH32.dcm"}),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", False, {"chrH31.dcm"}),
        ("山田*", False, {"chrH31.dcm", "chrH32.dcm"}),
        ("太郎", True, {"chrH31.dcm", "chrH32.dcm"}),
        ("洪^吉洞", False, {"chrI2.dcm"}),
        ("홍^길동", False, {"chrI2.dcm"}),
        ("길동", True, {"chrI2.dcm"}),
        ("Hong^Gildong", False, {"chrI2.dcm"}),
        ("김희중", False, {"chrKoreanMulti.dcm"}),
        ("김*", False, {"chrKoreanMulti.dcm"}),
        ("王^小東", False, {"chrX1.dcm"}),
        ("王^小东", False, {"chrX2.dcm"}),
        ("wang", True, {"chrX1.dcm", "chrX2.dcm"}),
        ("王", True, {"chrX1.dcm", "chrX2.dcm"}),
    ],
)
def test_search_names_in_other_character_sets(
    client: httpx.Client, charset_archive: str, name: str, fuzzy: bool, expected: set[str]
) -> None:
    params = {"PatientID": f"{charset_archive}-*", "PatientName": name}
    if fuzzy:
        params["fuzzymatching"] = "true"
    r = client.get("/studies", params=params)
    assert r.status_code == 200, r.text
    found = {value(s, "00100020").removeprefix(f"{charset_archive}-") for s in r.json()}
    assert found == expected


def test_names_are_returned_decoded(client: httpx.Client, charset_archive: str) -> None:
    expected = {
        "chrH31.dcm": {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        "chrH32.dcm": {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        "chrI2.dcm": {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"},
        "chrKoreanMulti.dcm": {"Alphabetic": "김희중"},
        "chrX1.dcm": {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"},
        "chrX2.dcm": {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"},
    }
    r = client.get("/studies", params={"PatientID": f"{charset_archive}-*"})
    got = {value(s, "00100020").removeprefix(f"{charset_archive}-"): value(s, "00100010") for s in r.json()}
    assert got == expected
    # the response is UTF-8 and says so
    assert all(values(s, "00080005") in (["ISO_IR 192"], []) for s in r.json())
