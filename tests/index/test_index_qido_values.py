"""QIDO query values at the edges (issue 9, finding 7): every malformed value is a QueryError naming its
parameter, never an exception from deeper down (SQL compilation, int(), the database); the UID rule is
the one STOW stores by (dicomd.dicom.uids.is_valid_uid)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dicomd.index import Index, QueryError, parse_qido
from dicomd.index.normalize import parse_int
from dicomd.index.qido import MAX_FUZZY_WORDS, MAX_LIST_VALUES, MAX_VALUE_LENGTH, SEARCHABLE

from support.index_rows import add, make_parsed

# attributes that take a list of values ("\" or "," separated)
LIST_KEYS = [s.keyword for s in SEARCHABLE.values() if s.kind in ("uid", "cs", "modalities")]
_LEVEL = {s.keyword: s.level for s in SEARCHABLE.values()}
HUGE = "9" * 5000  # int() refuses more than 4300 digits with a ValueError
LIGATURE = "\ufdfa"  # NFKD (fold) makes 18 characters, 4 words, of it
SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() is true, int() refuses it


def _digits(zero: int) -> Callable[[str], str]:
    """Writes ASCII digits in another script (whose digit zero is `zero`): \\d and int() take these."""
    return lambda ascii_digits: "".join(chr(zero + int(d)) for d in ascii_digits)


fw, ar, nko = _digits(0xFF10), _digits(0x0660), _digits(0x07C0)  # full-width, Arabic-Indic, N'Ko


def _error(level: Any, params: list[tuple[str, str]]) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse_qido(level, params)
    return info.value


def test_every_list_capable_attribute_is_covered() -> None:
    assert set(LIST_KEYS) == {
        "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
        "PatientSex", "Modality", "BodyPartExamined", "ModalitiesInStudy",
    }  # fmt: skip


@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize("value", [",", "\\", ",,", " , \\ ", "\\\\,"])
def test_list_of_separators_only_is_an_error(key: str, value: str) -> None:
    # was: an empty list, whose SQL "IN ()" failed to compile (500)
    error = _error(_LEVEL[key], [(key, value)])
    assert error.param == key and "no value" in str(error)


@pytest.mark.parametrize("key", LIST_KEYS)
def test_list_with_some_empty_items_keeps_the_others(key: str) -> None:
    value = "1.2,,1.3\\" if key.endswith("UID") else "CT,,MR\\"
    [f] = parse_qido("instance", [(key, value)]).filters
    assert f.match == "list" and len(f.values) == 2


def test_too_long_list_is_an_error() -> None:
    uids = ",".join(f"1.2.{i}" for i in range(MAX_LIST_VALUES))
    assert len(parse_qido("study", [("StudyInstanceUID", uids)]).filters[0].values) == MAX_LIST_VALUES
    error = _error("study", [("StudyInstanceUID", uids + ",1.3")])
    assert error.param == "StudyInstanceUID" and f"at most {MAX_LIST_VALUES}" in str(error)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PatientID", "*" + "B" * 60_000),  # was: SQLite "LIKE or GLOB pattern too complex" (500)
        ("PatientName", "*" + "B" * MAX_VALUE_LENGTH),
        ("StudyDescription", "x" * (MAX_VALUE_LENGTH + 1)),
        ("PatientName", LIGATURE * (MAX_VALUE_LENGTH + 1)),
        ("StudyInstanceUID", "1.2," + "1" * (MAX_VALUE_LENGTH + 1)),
        ("Modality", "CT\\" + "M" * (MAX_VALUE_LENGTH + 1)),
    ],
)
def test_too_long_value_is_an_error(key: str, value: str) -> None:
    error = _error("instance", [(key, value)])
    assert error.param == key and "longer than" in str(error)


def test_fuzzy_search_with_too_many_words_is_an_error() -> None:
    # was: one LIKE per word, and SQLite's "Expression tree is too large (maximum depth 1000)" (500)
    words = " ".join(f"w{i}" for i in range(MAX_FUZZY_WORDS + 1))
    error = _error("study", [("PatientName", words), ("fuzzymatching", "true")])
    assert error.param == "PatientName" and f"at most {MAX_FUZZY_WORDS}" in str(error)
    # counted after folding and without repeats; the same value without fuzzy matching is one LIKE
    error = _error("study", [("fuzzymatching", "true"), ("ReferringPhysicianName", f"{words}^^")])
    assert error.param == "ReferringPhysicianName"
    assert parse_qido("study", [("PatientName", words)]).filters[0].match == "single"
    repeated = "^".join(["jo"] * 200) + " " + LIGATURE * 200
    assert parse_qido("study", [("PatientName", repeated), ("fuzzymatching", "true")]).fuzzy


def test_many_includefields_are_kept_once_in_order() -> None:
    tags = [f"{0x00990000 + i:08X}" for i in range(5000)]
    q = parse_qido("study", [("includefield", ",".join(tags + tags[:100]))])
    assert q.include_tags == tags


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        # digits of other scripts: \d and int() accept them, DICOM values never hold them
        ("limit", fw("1"), "not an integer"),
        ("limit", ar("3"), "not an integer"),
        ("limit", SUPERSCRIPT_TWO, "not an integer"),
        ("offset", fw("10"), "not an integer"),
        ("offset", nko("1"), "not an integer"),
        ("SeriesNumber", ar("1"), "not an integer"),
        ("InstanceNumber", fw("1"), "not an integer"),
        ("StudyDate", fw("2020"), "not a date"),
        ("StudyDate", ar("20200101"), "not a date"),
        ("PatientBirthDate", fw("2020") + "-", "not a date"),
        ("StudyTime", fw("12"), "not a time"),
        ("PerformedProcedureStepStartTime", "12" + fw("3") + "0", "not a time"),
        # numbers far too large: int() of 5,000 digits raises, 10**30 overflows every SQL integer
        ("limit", HUGE, "between 1 and"),
        ("offset", HUGE, "between 0 and"),
        ("offset", str(10**30), "between 0 and"),
        ("offset", "-" + HUGE, "between 0 and"),
        ("SeriesNumber", HUGE, "out of range"),
        ("SeriesNumber", "9999999999", "out of range"),  # was: PostgreSQL "integer out of range" (500)
        ("InstanceNumber", "2147483648", "out of range"),
        ("InstanceNumber", "-2147483649", "out of range"),
        # signs and separators int() would take
        ("limit", "1_0", "not an integer"),
        ("SeriesNumber", "1_0", "not an integer"),
        ("limit", "--1", "not an integer"),
        ("limit", "", "not an integer"),
        # impossible dates
        ("StudyDate", "20201301", "not a date"),
        ("StudyDate", "20200132", "not a date"),
        ("StudyDate", "20200001-", "not a date"),
        ("PatientBirthDate", "202000", "not a date"),
        # NUL: PostgreSQL refuses it in a text parameter (was: psycopg.DataError, 500)
        ("PatientName", "Doe\x00", "NUL"),
        ("PatientName", "\x00*", "NUL"),
        ("PatientID", "\x00", "NUL"),
        ("StudyDescription", "a\x00b*", "NUL"),
        ("Modality", "C\x00T", "NUL"),
        ("ModalitiesInStudy", "CT,\x00", "NUL"),
        ("AccessionNumber", "x\x00", "NUL"),
        ("StudyInstanceUID", "1.2\x00", "NUL"),
        ("StudyDate", "2020\x00", "NUL"),
        # UIDs outside the rule
        ("StudyInstanceUID", "1" * 65, "not a UID"),
        ("StudyInstanceUID", ".1.2", "not a UID"),
        ("SeriesInstanceUID", "1.2,x", "not a UID"),
        ("SOPClassUID", fw("1") + "." + fw("2"), "not a UID"),
    ],
)
def test_malformed_values_name_their_parameter(key: str, value: str, fragment: str) -> None:
    error = _error("instance", [(key, value)])
    assert error.param == key and fragment in str(error), str(error)


@pytest.mark.parametrize("key", ["00100010\n", "PatientName\n", "0010001" + fw("0"), "00100010 "])
def test_keys_are_matched_whole(key: str) -> None:
    # "$" matched before a trailing newline, and the message then claimed PatientName was not searchable
    error = _error("study", [(key, "x")])
    assert error.param == key and "unknown" in str(error)


@pytest.mark.parametrize("name", ["0010001G", "0010 0010", "all\x00", "\x00", "00100010\x00"])
def test_odd_includefield_is_an_error(name: str) -> None:
    error = _error("study", [("includefield", name)])
    assert error.param == "includefield"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        # the lenient UID rule of STOW: such UIDs are stored (with a warning), so they can be searched
        ("StudyInstanceUID", "1.2..3", ("1.2..3",)),
        ("StudyInstanceUID", "1.02.3", ("1.02.3",)),
        ("SeriesInstanceUID", "1.2.3.", ("1.2.3.",)),
        ("SOPInstanceUID", "1.2..3,1.2", ("1.2..3", "1.2")),
        ("StudyInstanceUID", "1" * 64, ("1" * 64,)),
        # integers: ASCII digits with an optional sign, surrounding spaces tolerated
        ("SeriesNumber", "+7", ("7",)),
        ("SeriesNumber", " 7 ", ("7",)),
        ("InstanceNumber", "-2147483648", ("-2147483648",)),
        ("InstanceNumber", "2147483647", ("2147483647",)),
        ("InstanceNumber", "007", ("7",)),
        ("StudyDate", "20200229", ("20200229", "20200229")),
        ("StudyDate", "202012", ("20201201", "20201231")),
    ],
)
def test_accepted_values(key: str, value: str, expected: tuple[str, ...]) -> None:
    [f] = parse_qido("instance", [(key, value)]).filters
    assert f.values == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("limit", " 5", 5), ("limit", "+5", 5), ("offset", "0", 0), ("offset", "0" * 5000 + "7", 7)],
)
def test_limit_and_offset(key: str, value: str, expected: int) -> None:
    assert getattr(parse_qido("study", [(key, value)]), key) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("-12", -12),
        ("+12", 12),
        (" 12\t", 12),
        ("0" * 5000 + "12", 12),
        (HUGE, 10**19),  # saturated: beyond every range a parameter allows
        ("-" + HUGE, -(10**19)),
        (str(10**30), 10**19),
        (str(2**63 - 1), 2**63 - 1),  # 19 digits: exact
        (str(10**19), 10**19),
        (fw("1"), None),
        (SUPERSCRIPT_TWO, None),
        (ar("3"), None),
        ("1_000", None),
        ("1e3", None),
        ("0x10", None),
        ("1\n2", None),
        ("", None),
        ("-", None),
        ("+-1", None),
        ("1\x00", None),
    ],
)
def test_parse_int(text: str, expected: int | None) -> None:
    assert parse_int(text) == expected


# -- against the real index (SQLite and PostgreSQL) ---------------------------------------------


def _found(idx: Index, level: Any, params: list[tuple[str, str]]) -> list[str]:
    tag = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}[level]
    return [r[tag]["Value"][0] for r in idx.search(parse_qido(level, params))]


def test_lenient_uids_are_searchable(index: Index) -> None:
    # stored by STOW with a warning (empty component, leading zero); QIDO refused "1.2..3" before
    assert add(index, make_parsed("1.2..3", "1.02.3.", "1.2..3.1", patient_id="LENIENT")) == ["created"]
    assert _found(index, "study", [("StudyInstanceUID", "1.2..3")]) == ["1.2..3"]
    assert _found(index, "study", [("StudyInstanceUID", "1.2..3\\9.9")]) == ["1.2..3"]
    assert _found(index, "series", [("SeriesInstanceUID", "1.02.3.")]) == ["1.02.3."]
    assert _found(index, "instance", [("SOPInstanceUID", "1.2..3.1,1.2")]) == ["1.2..3.1"]


@pytest.mark.parametrize(
    ("level", "key", "value"),
    [
        ("instance", "InstanceNumber", "2147483647"),
        ("instance", "InstanceNumber", "-2147483648"),
        ("series", "SeriesNumber", "2147483647"),
        ("study", "PatientName", "\U0010ffff*"),
        ("study", "PatientName", "\U0010ffff" * 70),
        ("study", "PatientName", "%_!*=?!%"),
        ("study", "PatientName", "x" * MAX_VALUE_LENGTH),
        ("study", "PatientName", LIGATURE * MAX_VALUE_LENGTH),  # the longest LIKE pattern after folding
        ("study", "PatientName", "*" + LIGATURE * (MAX_VALUE_LENGTH - 1)),
        ("study", "PatientName", "=*=" + LIGATURE * (MAX_VALUE_LENGTH - 3)),
        ("study", "PatientID", "*" + "\U0010ffff" * (MAX_VALUE_LENGTH - 1)),
        ("study", "PatientID", "*" + "!%_" * (MAX_VALUE_LENGTH // 3)),  # each escaped: a longer pattern
        ("study", "PatientName", " ".join(f"w{i}" for i in range(MAX_FUZZY_WORDS))),
        ("study", "ReferringPhysicianName", "\x01\x1f*"),
        ("study", "PatientID", "\ufffd\ufffd"),
        ("study", "StudyDescription", "*" + "?*" * 500),
        ("series", "Modality", "\x7f"),
        ("study", "ModalitiesInStudy", ",".join(f"M{i}" for i in range(MAX_LIST_VALUES))),
    ],
)
def test_extreme_valid_values_run(index: Index, level: Any, key: str, value: str) -> None:
    # accepted values reach SQL on both backends without an error (and match nothing here)
    add(index, make_parsed(patient_id="EXTREME"))
    assert _found(index, level, [(key, value)]) == []
    assert _found(index, level, [(key, value), ("fuzzymatching", "true")]) == []


def test_all_list_filters_at_their_longest_at_once(index: Index) -> None:
    # every list-capable attribute with the longest list: within SQLite's and PostgreSQL's limits on
    # bound parameters (32,766 and 65,535)
    add(index, make_parsed("1.5", "1.5.1", "1.5.1.1", modality="CT"))
    params = [
        (key, ",".join(["1.5", "1.5.1", "1.5.1.1"] + [f"9.{i}" for i in range(MAX_LIST_VALUES - 3)]))
        if key.endswith("UID")
        else (key, ",".join(["CT", "M", "F", "O"] + [f"X{i}" for i in range(MAX_LIST_VALUES - 4)]))
        for key in LIST_KEYS
        if key not in ("SOPClassUID", "PatientSex", "BodyPartExamined")
    ]
    assert _found(index, "instance", params) == ["1.5.1.1"]
