"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root queries answered from the SQL index.

A request identifier is translated into the equivalent QIDO-RS query (index/qido.py): each key with a
value is a matching parameter, every key is an includefield; the QIDO level is the query level
(PATIENT: studies, grouped by PatientID). So wildcards, ranges, UID lists, person name case and accent
folding and the validation of values are QIDO's by construction. DIMSE specifics:
- an empty value (or only '*') is universal matching: a return key;
- the identifier's Specific Character Set decodes its values (pydicom); answers are in UTF-8
  (ISO_IR 192), whatever the stored files were in;
- relational queries (a matching key of a level below the query level) are refused (0xC000), and so is a
  level the information model lacks (0xA900); keys of the levels above may use any matching kind;
- matching on keys the index does not search (optional keys: the other attributes, sequences) is not
  supported: they are return keys, and the responses say so (pending 0xFF01, PS3.4 C.4.1.1.4).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomd.dimse.q_common import (
    CANCELLED,
    IDENTIFIER_DOES_NOT_MATCH,
    LEVEL_RANK,
    PENDING,
    PENDING_OPTIONAL_KEYS_UNSUPPORTED,
    QIDO_LEVEL,
    QUERY_RETRIEVE_LEVEL,
    SUCCESS,
    UNABLE_TO_PROCESS,
    IdentifierError,
    QueryLevel,
    element_text,
    failure_status,
    query_level,
    run_checked,
    top_level_elements,
)
from dicomd.index.levels import level_of
from dicomd.index.normalize import first_value
from dicomd.index.qido import MAX_LIMIT, SEARCHABLE, QidoQuery, QueryError, parse_qido
from dicomd.index.schema import DEFAULT_PARTITION_KEY

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from dicomd.dimse.context import Gateway
    from dicomd.index.store import Index

log = logging.getLogger(__name__)

SPECIFIC_CHARACTER_SET = 0x00080005
PATIENT_ID = "00100020"
ISSUER_OF_PATIENT_ID = "00100021"
NUMBER_OF_STUDY_RELATED_SERIES = "00201206"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"
# PATIENT level counts, summed over the patient's studies
NUMBER_OF_PATIENT_RELATED_STUDIES = "00201200"
NUMBER_OF_PATIENT_RELATED_SERIES = "00201202"
NUMBER_OF_PATIENT_RELATED_INSTANCES = "00201204"
_NOT_KEYS = {QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET}
_PAGE = MAX_LIMIT
_UTF8 = "ISO_IR 192"


@dataclass
class Translation:
    """A C-FIND identifier as a QIDO query: matching parameters, and the keys to answer with."""

    params: list[tuple[str, str]] = field(default_factory=list)
    return_keys: list[DataElement] = field(default_factory=list)
    optional_keys_unsupported: bool = False


def _attribute_rank(tag: str, searchable_level: str) -> int:
    """The query level an attribute belongs to (patient attributes are study-level in the index)."""
    if searchable_level == "study":
        return LEVEL_RANK["PATIENT"] if tag.startswith("0010") else LEVEL_RANK["STUDY"]
    return LEVEL_RANK["SERIES"] if searchable_level == "series" else LEVEL_RANK["IMAGE"]


def _has_matching_values(sequence: Sequence) -> bool:
    return any(element_text(e).strip() for item in sequence for e in item if e.VR != "SQ")


def translate(identifier: Dataset, level: QueryLevel) -> Translation:
    """The QIDO parameters of a C-FIND identifier at `level` (values decoded in its character set)."""
    out = Translation()
    include: list[str] = []
    for elem in top_level_elements(identifier):
        if elem.tag in _NOT_KEYS:
            continue
        tag = f"{elem.tag:08X}"
        out.return_keys.append(elem)
        include.append(tag)
        if elem.VR == "SQ":
            # sequence matching (PS3.4 C.2.2.2.6) is not supported: a return key
            if elem.value and _has_matching_values(elem.value):
                out.optional_keys_unsupported = True
            continue
        text = element_text(elem)
        if not text.strip("*").strip():
            continue  # universal matching: a return key
        searchable = None if elem.tag.is_private else SEARCHABLE.get(tag)
        if searchable is None:
            out.optional_keys_unsupported = True
            continue
        if _attribute_rank(tag, searchable.level) > LEVEL_RANK[level]:
            raise IdentifierError(
                UNABLE_TO_PROCESS, f"relational queries are not supported ({searchable.keyword})"
            )
        out.params.append((tag, text))
    if include:
        out.params.append(("includefield", ",".join(include)))
    return out


def parse_translation(translation: Translation, level: QueryLevel) -> QidoQuery:
    try:
        query = parse_qido(QIDO_LEVEL[level], translation.params, partition_key=DEFAULT_PARTITION_KEY)
    except QueryError as exc:
        raise IdentifierError(UNABLE_TO_PROCESS, str(exc).removeprefix("Invalid query parameter ")) from None
    query.limit = _PAGE
    # grouping studies into patients needs these
    if level == "PATIENT":
        query.include_tags += [PATIENT_ID, ISSUER_OF_PATIENT_ID]
    return query


def search_all(index: Index, query: QidoQuery) -> Iterator[dict[str, Any]]:
    """Every match of a QIDO query, a page at a time."""
    query.offset = 0
    while True:
        page = index.search(query)
        yield from page
        if len(page) < query.limit:
            return
        query.offset += len(page)


def _count(result: dict[str, Any], tag: str) -> int:
    value = first_value(result.get(tag))
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


def _is_patient_attribute(tag: str) -> bool:
    return tag.startswith("0010") and level_of(tag) == "study"


def group_patients(studies: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """PATIENT level: one result per patient (PatientID and its issuer), with the patient's counts.

    The index has no patient table: the attributes are those of one of the patient's studies."""
    patients: dict[tuple[Any, Any], dict[str, Any]] = {}
    for study in studies:
        key = (first_value(study.get(PATIENT_ID)), first_value(study.get(ISSUER_OF_PATIENT_ID)))
        patient = patients.get(key)
        if patient is None:
            # the patient's attributes only: a study's would answer for one of several studies
            patient = patients[key] = {t: v for t, v in study.items() if _is_patient_attribute(t)}
            patient[NUMBER_OF_PATIENT_RELATED_STUDIES] = {"vr": "IS", "Value": [0]}
            patient[NUMBER_OF_PATIENT_RELATED_SERIES] = {"vr": "IS", "Value": [0]}
            patient[NUMBER_OF_PATIENT_RELATED_INSTANCES] = {"vr": "IS", "Value": [0]}
        patient[NUMBER_OF_PATIENT_RELATED_STUDIES]["Value"][0] += 1
        patient[NUMBER_OF_PATIENT_RELATED_SERIES]["Value"][0] += _count(study, NUMBER_OF_STUDY_RELATED_SERIES)
        patient[NUMBER_OF_PATIENT_RELATED_INSTANCES]["Value"][0] += _count(
            study, NUMBER_OF_STUDY_RELATED_INSTANCES
        )
    return list(patients.values())


# VRs whose JSON values are the element's values as they are (PS3.18 F.2.3): a key of one of them, or a
# person name (F.2.2), is answered without Dataset.from_json, which cost more than the rest of an answer
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def text_values(found: dict[str, Any]) -> list[str] | None:
    """The values of a stored text value or person name as Dataset.from_json gives them to its element
    (a person name as one string); None for any other."""
    values = found.get("Value")
    if not isinstance(values, list) or not values:
        return None
    vr = found.get("vr")
    if vr == "PN":
        values = [person_name(value) for value in values]
    elif vr not in _TEXT_VRS:
        return None
    return values if all(isinstance(value, str) for value in values) else None


def text_element(tag: int, found: dict[str, Any]) -> DataElement | None:
    """The element of a stored text value or person name, as Dataset.from_json would build it; None for
    any other."""
    values = text_values(found)
    if values is None:
        return None
    return DataElement(tag, found["vr"], values[0] if len(values) == 1 else values)


def person_name(value: Any) -> str | None:
    """A DICOM JSON person name (PS3.18 F.2.2) as the string Dataset.from_json makes of it: its component
    groups joined by "=", up to the last group present; None for anything else."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    present = [position for position, group in enumerate(_NAME_GROUPS) if group in value]
    groups = [""] * ((present[-1] + 1) if present else 1)
    for position in present:
        groups[position] = value[_NAME_GROUPS[position]]
    return "=".join(groups)


def _answer_element(request: DataElement, found: dict[str, Any] | None) -> DataElement:
    """The answer to one requested key: its value from the index JSON, else empty."""
    tag = f"{request.tag:08X}"
    if has_value(found):
        elem = text_element(request.tag, found)
        if elem is None:
            try:
                elem = Dataset.from_json({tag: found})[request.tag]
            except Exception:  # a stored value pydicom cannot take back: answer the key empty
                elem = None
        if elem is not None:
            if elem.VR == "SQ" and request.VR == "SQ" and request.value:
                _keep_requested_items_keys(elem.value, request.value[0])
            return elem
    vr = empty_key_vr(request, found)
    return DataElement(request.tag, vr, [] if vr == "SQ" else None)


def has_value(found: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether a match's stored element answers its key with a value (else the key is answered empty)."""
    return found is not None and ("Value" in found or "InlineBinary" in found)


def empty_key_vr(request: DataElement, found: dict[str, Any] | None) -> str:
    """The VR of a key answered empty: the key's, or the stored element's where the key's is ambiguous."""
    return request.VR if " or " not in request.VR else (found or {}).get("vr", "UN")


def _keep_requested_items_keys(items: Sequence, requested_item: Dataset) -> None:
    """A sequence key with keys in its item asks for those keys of each item (PS3.4 C.2.2.1.3)."""
    wanted = {e.tag for e in requested_item}
    if not wanted:
        return
    for item in items:
        for tag in [e.tag for e in item if e.tag not in wanted]:
            del item[tag]


def answer(result: dict[str, Any], translation: Translation, level: QueryLevel, ae_title: str) -> Dataset:
    """The response identifier for one match: the requested keys, in UTF-8."""
    ds = Dataset()
    ds.SpecificCharacterSet = _UTF8
    for request in translation.return_keys:
        ds.add(_answer_element(request, result.get(f"{request.tag:08X}")))
    ds.QueryRetrieveLevel = level
    ds.RetrieveAETitle = ae_title
    return ds


def handle_find(event: Event, gateway: Gateway) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """pynetdicom EVT_C_FIND handler (a C-FIND the direct path, dimse/direct_find.py, did not take)."""
    sop_class = str(event.request.AffectedSOPClassUID or "")
    return find_responses(lambda: event.identifier, sop_class, lambda: event.is_cancelled, gateway)


# builds a match's response identifier: ``answer``, or the direct path's encoder (which may give bytes)
Answerer = Callable[[dict[str, Any], Translation, QueryLevel, str], Any]


def find_responses(
    identifier_of: Callable[[], Dataset],
    sop_class: str,
    is_cancelled: Callable[[], bool],
    gateway: Gateway,
    answers: Answerer | None = None,
) -> Iterator[tuple[int | Dataset, Any]]:
    """A C-FIND's responses: (pending status, identifier) per match, then the final status; a failure
    status with an ErrorComment for a bad identifier, never an exception. ``identifier_of`` decodes the
    request's identifier; ``is_cancelled`` tells whether the peer sent a C-CANCEL for it; ``answers``
    builds each match's identifier (``answer``'s Dataset by default)."""
    build = answer if answers is None else answers
    try:
        identifier = run_checked(identifier_of, "identifier")
        level: QueryLevel = run_checked(lambda: query_level(identifier, sop_class), "identifier")
        translation: Translation = run_checked(lambda: translate(identifier, level), "identifier")
        query = parse_translation(translation, level)
    except IdentifierError as exc:
        yield failure_status(exc.status, exc.comment), None
        return
    pending = PENDING_OPTIONAL_KEYS_UNSUPPORTED if translation.optional_keys_unsupported else PENDING
    ae_title = gateway.settings.dicom_ae_title
    try:
        results: Iterator[dict[str, Any]] = search_all(gateway.index, query)
        if level == "PATIENT":
            results = iter(group_patients(results))
        for result in results:
            if is_cancelled():
                yield CANCELLED, None
                return
            yield pending, build(result, translation, level, ae_title)
    except Exception as exc:  # the index failed: the peer gets a status, the log no PHI
        log.error("C-FIND: the index search failed (%s)", type(exc).__name__)
        yield failure_status(UNABLE_TO_PROCESS, "the index could not be searched"), None
        return
    yield SUCCESS, None


__all__ = ["IDENTIFIER_DOES_NOT_MATCH", "find_responses", "handle_find", "search_all", "translate"]
