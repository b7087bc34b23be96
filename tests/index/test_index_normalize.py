"""Value normalisation used for the index columns and QIDO matching."""

from __future__ import annotations

from typing import Any

from dicomd.index.levels import level_of
from dicomd.index.normalize import (
    fold,
    keep_tag,
    keep_value,
    norm_time,
    pn_norm,
    pn_string,
    pn_words,
    query_words,
)


def test_fold() -> None:
    assert fold("Müller^Jérôme") == "MULLER^JEROME"
    assert fold("\uff21\uff22\uff23") == "ABC"  # full-width forms
    assert fold("だ") == "だ"  # kana voicing marks are meaning, not accents
    assert fold("홍길동") == "홍길동"  # Hangul recomposed after NFKD
    assert fold("ß") == "SS"


def test_person_names() -> None:
    value = {"Alphabetic": "Yamada^Tarou^^", "Ideographic": "山田^太郎", "Phonetic": ""}
    assert pn_string(value) == "Yamada^Tarou^^=山田^太郎"
    assert pn_norm(pn_string(value)) == "=YAMADA^TAROU=山田^太郎="
    assert pn_words("Doe^John Paul=") == " DOE JOHN PAUL "
    assert pn_norm("") == "" and pn_words("") == ""
    assert query_words("doe^jo") == ["DOE", "JO"]


def test_norm_time() -> None:
    assert norm_time("10") == "100000"
    assert norm_time("10:30") == "103000"
    assert norm_time("103000.25") == "103000.25"


def _keep(tag: str, element: dict[str, Any]) -> dict[str, Any] | None:
    return keep_value(element) if keep_tag(tag) else None


def test_keep_element() -> None:
    assert _keep("00100010", {"vr": "PN", "Value": [{"Alphabetic": "A"}]}) is not None
    assert _keep("00091010", {"vr": "LO", "Value": ["private"]}) is None
    assert _keep("00080000", {"vr": "UL", "Value": [4]}) is None
    assert _keep("7FE00010", {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}) is None
    assert _keep("00420011", {"vr": "OB", "InlineBinary": "AAAA"}) is None
    assert _keep("00081030", {"vr": "LO"}) == {"vr": "LO"}
    assert _keep("00104000", {"vr": "LT", "Value": ["x" * 5000]}) is None
    assert _keep("00104000", {"vr": "LT", "Value": ["x" * 500]}) is not None


def test_levels() -> None:
    assert level_of("00100010") == "study"
    assert level_of("00101010") == "study"  # PatientAge (Patient Study module)
    assert level_of("00102210") == "series"  # AnatomicalOrientationType: General Series
    assert level_of("00080060") == "series"
    assert level_of("00080018") == "instance"
    assert level_of("00280010") == "instance"
