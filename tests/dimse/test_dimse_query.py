"""C-FIND SCP (dimse/query.py) against a real index, through pynetdicom (and DCMTK's findscu): every level
of Patient Root and Study Root, each matching kind (single value, universal, wildcard, range, UID list),
person name case folding, identifiers in several character sets, answers in UTF-8 with exactly the
requested keys, cancel, and the failures of identifiers this SCP cannot process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from test_dimse_query_archive import AE_TITLE, Scp, find, query, start_scp, with_new_uids

from dicomd.dimse import query as query_module

from support.backends import BACKENDS, backend_url
from support.dicom_files import CHARSET_FILES, TEST_FILES, make_instance, new_uid

PATIENT_ROOT = PatientRootQueryRetrieveInformationModelFind
STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind


class Uids:
    """The archive's UIDs: patient A (studies A1: CT + MR series, A2: CR), patient B (study B1: MR)."""

    def __init__(self) -> None:
        self.a1, self.a2, self.b1 = new_uid(), new_uid(), new_uid()
        self.a1_ct, self.a1_mr, self.a2_cr, self.b1_mr = new_uid(), new_uid(), new_uid(), new_uid()
        self.a1_ct_1, self.a1_ct_2, self.a1_mr_1, self.a2_cr_1, self.b1_mr_1 = (new_uid() for _ in range(5))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99TEST", meaning
    return item


def _archive_files(u: Uids) -> list[bytes]:
    a: dict[str, Any] = {"patient_id": "PAT-A", "patient_name": "Doe^John", "PatientSex": "M"}
    a1: dict[str, Any] = {
        **a,
        "study": u.a1,
        "StudyDate": "20240102",
        "StudyTime": "101112",
        "AccessionNumber": "ACC-A1",
        "StudyDescription": "Head CT",
        "StudyID": "A1",
    }
    a1["ProcedureCodeSequence"] = [_code("P1", "Head CT"), _code("P2", "Contrast")]
    a2: dict[str, Any] = {**a, "study": u.a2, "StudyDate": "20230615", "StudyTime": "140000"}
    a2 |= {"AccessionNumber": "ACC-A2", "StudyDescription": "Chest"}
    b1: dict[str, Any] = {"patient_id": "PAT-B", "patient_name": "Smith^Jane", "PatientSex": "F"}
    b1 |= {"study": u.b1, "StudyDate": "20240301", "StudyTime": "083000", "PatientBirthDate": "19851231"}
    b1 |= {"AccessionNumber": "ACC-B1", "StudyDescription": "head mri"}
    return [
        make_instance(**a1, series=u.a1_ct, sop=u.a1_ct_1, modality="CT", SeriesNumber=1, InstanceNumber=1),
        make_instance(**a1, series=u.a1_ct, sop=u.a1_ct_2, modality="CT", SeriesNumber=1, InstanceNumber=2),
        make_instance(**a1, series=u.a1_mr, sop=u.a1_mr_1, modality="MR", SeriesNumber=2, InstanceNumber=1),
        make_instance(**a2, series=u.a2_cr, sop=u.a2_cr_1, modality="CR", SeriesNumber=1, InstanceNumber=1),
        make_instance(**b1, series=u.b1_mr, sop=u.b1_mr_1, modality="MR", SeriesNumber=7, InstanceNumber=3),
    ]


CHARSET_NAMES = {
    "chrFren.dcm": "CS-FREN",
    "chrGerm.dcm": "CS-GERM",
    "chrRuss.dcm": "CS-RUSS",
    "chrGreek.dcm": "CS-GREEK",
    "chrH31.dcm": "CS-H31",
    "chrX1.dcm": "CS-X1",
}


@pytest.fixture(scope="module", params=BACKENDS)
def archive(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Scp, Uids]]:
    """The archive on each index backend (SQLite; PostgreSQL when configured)."""
    root = tmp_path_factory.mktemp("find")
    with backend_url(request.param, root) as url:
        scp = start_scp(root, index_url=url)
        uids = Uids()
        scp.stow(_archive_files(uids))
        scp.stow(with_new_uids(CHARSET_FILES / name, pid) for name, pid in CHARSET_NAMES.items())
        yield scp, uids
        scp.close()


def _studies(result: Any) -> set[str]:
    return {str(d.StudyInstanceUID) for d in result.identifiers}


# ---- study level --------------------------------------------------------------------------------


def test_study_level_answers_exactly_the_requested_keys_in_utf8(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    keys = {"PatientID": "PAT-A", "StudyInstanceUID": "", "StudyDate": "", "ModalitiesInStudy": ""}
    keys |= {"PatientComments": "", "NumberOfStudyRelatedInstances": "", "StudyDescription": ""}
    result = find(scp, query("STUDY", **keys))
    assert result.statuses == [0xFF00, 0xFF00, 0x0000]
    by_study = {str(d.StudyInstanceUID): d for d in result.identifiers}
    assert set(by_study) == {u.a1, u.a2}
    a1 = by_study[u.a1]
    expected = set(keys) | {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
    assert {e.keyword for e in a1} == expected
    assert (a1.QueryRetrieveLevel, a1.SpecificCharacterSet, a1.RetrieveAETitle) == (
        "STUDY",
        "ISO_IR 192",
        AE_TITLE,
    )
    assert (a1.StudyDate, list(a1.ModalitiesInStudy), a1.NumberOfStudyRelatedInstances) == (
        "20240102",
        ["CT", "MR"],
        3,
    )
    assert a1.StudyDescription == "Head CT"
    assert a1.PatientComments in ("", None)  # an absent attribute is answered empty


def test_patient_root_study_level(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    result = find(scp, query("STUDY", PatientID="PAT-B", StudyInstanceUID=""), PATIENT_ROOT)
    assert result.final == 0x0000 and _studies(result) == {u.b1}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # single value, universal, person names folded (case, wildcards)
        ({"PatientName": "Doe^John"}, {"a1", "a2"}),
        ({"PatientName": "doe^john"}, {"a1", "a2"}),
        ({"PatientName": "SMITH*"}, {"b1"}),
        ({"PatientName": "?oe*"}, {"a1", "a2"}),
        ({"PatientName": "*", "PatientID": "PAT-*"}, {"a1", "a2", "b1"}),
        # other strings are case sensitive, wildcards too
        ({"StudyDescription": "Head*"}, {"a1"}),
        ({"StudyDescription": "*ea*"}, {"a1", "b1"}),
        ({"AccessionNumber": "ACC-B1"}, {"b1"}),
        ({"AccessionNumber": "acc-b1"}, set()),
        ({"PatientSex": "F"}, {"b1"}),
        ({"PatientSex": "M", "PatientID": "PAT-?"}, {"a1", "a2"}),
        # date and time ranges, a partial date standing for its month
        ({"StudyDate": "20240101-"}, {"a1", "b1"}),
        ({"StudyDate": "-20231231"}, {"a2"}),
        ({"StudyDate": "20240101-20240131"}, {"a1"}),
        ({"StudyDate": "20230615"}, {"a2"}),
        ({"StudyDate": "202403"}, {"b1"}),
        ({"StudyTime": "0800-0900", "PatientID": "PAT-*"}, {"b1"}),
        ({"PatientBirthDate": "19850101-19851231"}, {"b1"}),
        # ModalitiesInStudy: a study matches when one of its series does; lists
        ({"ModalitiesInStudy": "MR"}, {"a1", "b1"}),
        ({"ModalitiesInStudy": "CR\\CT"}, {"a1", "a2"}),
        ({"PatientID": "NOBODY"}, set()),
    ],
)
def test_study_level_matching(archive: tuple[Scp, Uids], keys: dict[str, str], expected: set[str]) -> None:
    scp, u = archive
    result = find(scp, query("STUDY", StudyInstanceUID="", **keys))
    assert result.final == 0x0000
    assert _studies(result) == {getattr(u, name) for name in expected}


def test_study_uid_lists(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    result = find(scp, query("STUDY", StudyInstanceUID=[u.a1, u.b1, new_uid()]))
    assert result.final == 0x0000 and _studies(result) == {u.a1, u.b1}


def test_matching_values_are_answered_as_stored(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    result = find(scp, query("STUDY", PatientName="doe*", StudyInstanceUID=u.a1))
    assert [str(d.PatientName) for d in result.identifiers] == ["Doe^John"]


# ---- series and image levels ----------------------------------------------------------------------


def test_series_level(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    keys = {"StudyInstanceUID": u.a1, "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": ""}
    result = find(scp, query("SERIES", **keys, NumberOfSeriesRelatedInstances=""))
    assert result.final == 0x0000
    found = {
        (d.SeriesInstanceUID, d.Modality, d.SeriesNumber, d.NumberOfSeriesRelatedInstances)
        for d in result.identifiers
    }
    assert found == {(u.a1_ct, "CT", 1, 2), (u.a1_mr, "MR", 2, 1)}
    assert {d.QueryRetrieveLevel for d in result.identifiers} == {"SERIES"}
    only_mr = find(scp, query("SERIES", **(keys | {"Modality": "MR"})))
    assert [d.SeriesInstanceUID for d in only_mr.identifiers] == [u.a1_mr]
    by_number = find(scp, query("SERIES", **(keys | {"StudyInstanceUID": "", "SeriesNumber": "7"})))
    assert [d.SeriesInstanceUID for d in by_number.identifiers] == [u.b1_mr]


def test_series_level_in_patient_root_and_across_studies(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    keys = {"PatientID": "PAT-A", "StudyInstanceUID": "", "SeriesInstanceUID": "", "Modality": "C?"}
    result = find(scp, query("SERIES", **keys), PATIENT_ROOT)
    assert {(d.StudyInstanceUID, d.SeriesInstanceUID) for d in result.identifiers} == {
        (u.a1, u.a1_ct),
        (u.a2, u.a2_cr),
    }


def test_image_level(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    keys = {
        "StudyInstanceUID": u.a1,
        "SeriesInstanceUID": u.a1_ct,
        "SOPInstanceUID": "",
        "InstanceNumber": "",
    }
    result = find(scp, query("IMAGE", **keys, SOPClassUID=""))
    assert result.final == 0x0000
    assert {(d.SOPInstanceUID, d.InstanceNumber) for d in result.identifiers} == {
        (u.a1_ct_1, 1),
        (u.a1_ct_2, 2),
    }
    assert {d.SOPClassUID for d in result.identifiers} == {"1.2.840.10008.5.1.4.1.1.2"}
    listed = find(
        scp, query("IMAGE", **(keys | {"SeriesInstanceUID": "", "SOPInstanceUID": [u.a1_ct_2, u.a1_mr_1]}))
    )
    assert {d.SOPInstanceUID for d in listed.identifiers} == {u.a1_ct_2, u.a1_mr_1}
    numbered = find(scp, query("IMAGE", **(keys | {"InstanceNumber": "2"})), PATIENT_ROOT)
    assert [d.SOPInstanceUID for d in numbered.identifiers] == [u.a1_ct_2]


# ---- patient level ---------------------------------------------------------------------------------


def test_patient_level_groups_studies_by_patient(archive: tuple[Scp, Uids]) -> None:
    scp, _ = archive
    keys = {"PatientID": "PAT-?", "PatientName": "", "PatientSex": "", "NumberOfPatientRelatedStudies": ""}
    keys |= {"NumberOfPatientRelatedSeries": "", "NumberOfPatientRelatedInstances": ""}
    keys |= {"StudyInstanceUID": "", "StudyDate": ""}  # not patient attributes: answered empty
    result = find(scp, query("PATIENT", **keys), PATIENT_ROOT)
    assert result.final == 0x0000
    assert {(d.StudyInstanceUID or "", d.StudyDate or "") for d in result.identifiers} == {("", "")}
    found = {
        (
            d.PatientID,
            str(d.PatientName),
            d.PatientSex,
            d.NumberOfPatientRelatedStudies,
            d.NumberOfPatientRelatedSeries,
            d.NumberOfPatientRelatedInstances,
        )
        for d in result.identifiers
    }
    assert found == {("PAT-A", "Doe^John", "M", 2, 3, 4), ("PAT-B", "Smith^Jane", "F", 1, 1, 1)}
    assert {d.QueryRetrieveLevel for d in result.identifiers} == {"PATIENT"}
    by_name = find(scp, query("PATIENT", PatientID="", PatientName="smith^jane"), PATIENT_ROOT)
    assert [d.PatientID for d in by_name.identifiers] == ["PAT-B"]


# ---- character sets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "name", "patient"),
    [
        ("ISO_IR 100", "Buc^Jérôme", "CS-FREN"),
        ("ISO_IR 100", "äneas^rüdiger", "CS-GERM"),  # case folded in Latin-1 too
        ("ISO_IR 100", "Aneas^Rudiger", "CS-GERM"),  # and accents
        ("ISO_IR 144", "Люкceмбypг", "CS-RUSS"),  # noqa: RUF001 - the file's name, Latin letters and all
        ("ISO_IR 126", "Διονυσιος", "CS-GREEK"),
        (["", "ISO 2022 IR 87"], "山田^太郎", "CS-H31"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "CS-H31"),
        ("ISO_IR 192", "王^小東", "CS-X1"),
        ("ISO_IR 192", "Wang*", "CS-X1"),
    ],
)
def test_identifiers_in_other_character_sets(
    archive: tuple[Scp, Uids], charset: str | list[str], name: str, patient: str
) -> None:
    scp, _ = archive
    identifier = query("STUDY", PatientID="CS-*", PatientName=name, StudyInstanceUID="")
    identifier.SpecificCharacterSet = charset
    result = find(scp, identifier)
    assert result.final == 0x0000
    assert [d.PatientID for d in result.identifiers] == [patient]
    # answered in UTF-8, with the name as stored
    answer = result.identifiers[0]
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    stored = next(n for n, p in CHARSET_NAMES.items() if p == patient)
    assert str(answer.PatientName) == str(pydicom.dcmread(CHARSET_FILES / stored).PatientName)


# ---- what is not matched, and failures ----------------------------------------------------------------


def test_optional_keys_the_index_cannot_match_are_return_keys_with_a_warning(
    archive: tuple[Scp, Uids],
) -> None:
    scp, u = archive
    identifier = query("STUDY", StudyInstanceUID=u.a1, OtherPatientIDs="SOMEONE-ELSE")
    result = find(scp, identifier)
    assert result.statuses == [0xFF01, 0x0000]  # matched anyway, and told so
    assert "OtherPatientIDs" in result.identifiers[0]
    item = Dataset()
    item.CodeValue = "XYZ"
    with_sequence = query("STUDY", StudyInstanceUID=u.a1, ProcedureCodeSequence=[item])
    assert find(scp, with_sequence).statuses == [0xFF01, 0x0000]
    empty_sequence = query("STUDY", StudyInstanceUID=u.a1, ProcedureCodeSequence=[])
    assert find(scp, empty_sequence).statuses == [0xFF00, 0x0000]
    private = query("STUDY", StudyInstanceUID=u.a1)
    private.add_new(0x00090010, "LO", "ACME")
    private.add_new(0x00091001, "LO", "match me")
    answered = find(scp, private)
    assert answered.statuses == [0xFF01, 0x0000]
    assert answered.identifiers[0][0x00091001].value in ("", None)


def test_universal_matching_of_lower_level_keys_is_a_return_key(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    result = find(scp, query("STUDY", StudyInstanceUID=u.b1, Modality="*", PatientName="*"))
    assert result.statuses == [0xFF00, 0x0000]
    assert str(result.identifiers[0].PatientName) == "Smith^Jane"


@pytest.mark.parametrize(
    ("model", "keys", "status", "comment"),
    [
        (STUDY_ROOT, {"StudyInstanceUID": ""}, 0xA900, "QueryRetrieveLevel is required"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "FOO"}, 0xA900, "not a level"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": ""}, 0xA900, "not a level"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "Modality": "CT"}, 0xC000, "relational"),
        (PATIENT_ROOT, {"QueryRetrieveLevel": "PATIENT", "StudyDate": "2024"}, 0xC000, "relational"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.abc"}, 0xC000, "not a UID"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024-01-01-02"}, 0xC000, "range"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyDate": "2024*"}, 0xC000, "wildcards"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "SERIES", "SeriesNumber": "99999999999"}, 0xC000, "out of range"),
    ],
)
def test_identifiers_this_scp_cannot_process(
    archive: tuple[Scp, Uids], model: str, keys: dict[str, str], status: int, comment: str
) -> None:
    scp, _ = archive
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    result = find(scp, identifier, model)
    assert result.statuses == [status]
    assert comment in result.comment and len(result.comment) <= 64


def test_sequence_return_keys(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    whole = find(scp, query("STUDY", StudyInstanceUID=u.a1, ProcedureCodeSequence=[]))
    items = whole.identifiers[0].ProcedureCodeSequence
    assert [(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning) for i in items] == [
        ("P1", "99TEST", "Head CT"),
        ("P2", "99TEST", "Contrast"),
    ]
    asked = Dataset()
    asked.CodeMeaning = ""
    some = find(scp, query("STUDY", StudyInstanceUID=u.a1, ProcedureCodeSequence=[asked]))
    assert some.statuses == [0xFF00, 0x0000]  # an item of empty keys asks for them, it does not match
    assert [[e.keyword for e in i] for i in some.identifiers[0].ProcedureCodeSequence] == [
        ["CodeMeaning"]
    ] * 2
    none = find(scp, query("STUDY", StudyInstanceUID=u.b1, ProcedureCodeSequence=[asked]))
    assert list(none.identifiers[0].ProcedureCodeSequence) == []


def test_return_keys_of_lower_levels_are_answered_empty(archive: tuple[Scp, Uids]) -> None:
    scp, u = archive
    result = find(scp, query("STUDY", StudyInstanceUID=u.b1, Modality="", SOPInstanceUID=""))
    assert result.final == 0x0000
    answer = result.identifiers[0]
    assert answer.Modality in ("", None) and answer.SOPInstanceUID in ("", None)


def test_cancel_stops_the_matches(archive: tuple[Scp, Uids], monkeypatch: pytest.MonkeyPatch) -> None:
    scp, _ = archive
    real_answer = query_module.answer

    def slow_answer(*args: Any) -> Dataset:
        time.sleep(0.2)  # the cancel arrives while matches are still pending
        return real_answer(*args)

    monkeypatch.setattr(query_module, "answer", slow_answer)
    result = find(scp, query("STUDY", PatientID="*", StudyInstanceUID=""), cancel_after=1)
    assert result.final == 0xFE00
    assert 1 <= len(result.identifiers) < 9


def test_an_index_failure_is_a_failure_status(
    archive: tuple[Scp, Uids], monkeypatch: pytest.MonkeyPatch
) -> None:
    scp, _ = archive

    def broken(*_: Any) -> Any:
        raise OSError("disk gone")

    monkeypatch.setattr(scp.index, "search", broken)
    result = find(scp, query("STUDY", StudyInstanceUID=""))
    assert result.statuses == [0xC000] and "index" in result.comment


# ---- DCMTK's findscu ---------------------------------------------------------------------------


def _findscu(scp: Scp, out_dir: Path, *args: str) -> list[Dataset]:
    out_dir.mkdir()
    cmd = ["findscu", "-aet", "FINDSCU", "-aec", AE_TITLE, "-X", "-od", str(out_dir), *args]
    done = subprocess.run([*cmd, "127.0.0.1", str(scp.port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def test_findscu_at_each_level(archive: tuple[Scp, Uids], tmp_path: Path) -> None:
    scp, u = archive
    studies = _findscu(
        scp, tmp_path / "study", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=DOE*",
        "-k", "StudyInstanceUID", "-k", "StudyDate=20240101-",
    )  # fmt: skip
    assert [d.StudyInstanceUID for d in studies] == [u.a1]
    series = _findscu(
        scp, tmp_path / "series", "-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={u.a1}",
        "-k", "SeriesInstanceUID", "-k", "Modality=CT",
    )  # fmt: skip
    assert [d.SeriesInstanceUID for d in series] == [u.a1_ct]
    images = _findscu(
        scp, tmp_path / "image", "-S", "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={u.a1}",
        "-k", f"SeriesInstanceUID={u.a1_ct}", "-k", "SOPInstanceUID", "-k", "InstanceNumber",
    )  # fmt: skip
    assert sorted((d.InstanceNumber, d.SOPInstanceUID) for d in images) == [(1, u.a1_ct_1), (2, u.a1_ct_2)]
    patients = _findscu(
        scp, tmp_path / "patient", "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=PAT-B",
        "-k", "PatientName", "-k", "NumberOfPatientRelatedStudies",
    )  # fmt: skip
    assert [(str(d.PatientName), d.NumberOfPatientRelatedStudies) for d in patients] == [("Smith^Jane", 1)]


def test_text_answers_are_built_as_pydicom_builds_them_from_json() -> None:
    """The answer fast path (query.text_element) against Dataset.from_json, its reference: every text
    and person name element of every bundled file, as the index JSON holds it, is the same element and
    encodes to the same bytes in both little endian syntaxes."""
    from pynetdicom.dsutils import encode

    from dicomd.dicom.parser import parse_file

    compared = names = 0
    for path in sorted([*TEST_FILES.iterdir(), *CHARSET_FILES.iterdir()]):
        try:
            dataset = parse_file(path).dataset
        except Exception:
            continue  # not a file our parser stores
        for tag, found in dataset.items():
            fast = query_module.text_element(int(tag, 16), found)
            if fast is None:
                continue
            reference = Dataset.from_json({tag: found})[int(tag, 16)]
            assert (fast.VR, fast.value) == (reference.VR, reference.value), (path.name, tag)
            for implicit in (True, False):
                one, other = Dataset(), Dataset()
                one.add(fast)
                other.add(reference)
                assert encode(one, implicit, True) == encode(other, implicit, True), (path.name, tag)
            compared += 1
            names += fast.VR == "PN"
    assert compared > 1000
    assert names > 50  # person names too, with ideographic and phonetic groups (charset files)
