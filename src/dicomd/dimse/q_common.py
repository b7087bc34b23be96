"""What the query (C-FIND) and retrieve (C-MOVE, C-GET) handlers share: the Query/Retrieve information
models and their levels (PS3.4 C.6), reading an identifier's level and values, and failure statuses.

An identifier's values become QIDO query parameters (index/qido.py), so C-FIND and the selection of
C-MOVE/C-GET match exactly as QIDO-RS does: one query engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomd.index.levels import Level

QueryLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]

# PS3.4 C.6: the levels of each information model (FIND, MOVE and GET SOP classes share them)
_PATIENT_ROOT: tuple[QueryLevel, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_STUDY_ROOT: tuple[QueryLevel, ...] = ("STUDY", "SERIES", "IMAGE")
_PATIENT_STUDY_ONLY: tuple[QueryLevel, ...] = ("PATIENT", "STUDY")  # retired, still found in the field
MODEL_LEVELS: dict[str, tuple[QueryLevel, ...]] = {
    "1.2.840.10008.5.1.4.1.2.1.1": _PATIENT_ROOT,  # Patient Root FIND
    "1.2.840.10008.5.1.4.1.2.1.2": _PATIENT_ROOT,  # Patient Root MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": _PATIENT_ROOT,  # Patient Root GET
    "1.2.840.10008.5.1.4.1.2.2.1": _STUDY_ROOT,  # Study Root FIND
    "1.2.840.10008.5.1.4.1.2.2.2": _STUDY_ROOT,  # Study Root MOVE
    "1.2.840.10008.5.1.4.1.2.2.3": _STUDY_ROOT,  # Study Root GET
    "1.2.840.10008.5.1.4.1.2.3.1": _PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.2": _PATIENT_STUDY_ONLY,
    "1.2.840.10008.5.1.4.1.2.3.3": _PATIENT_STUDY_ONLY,
}
# the C-FIND SOP classes of these models
FIND_MODELS = frozenset(
    {"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.3.1"}
)
# the C-MOVE SOP classes of these models
MOVE_MODELS = frozenset(
    {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.3.2"}
)
# the C-GET SOP classes of these models
GET_MODELS = frozenset(
    {"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3", "1.2.840.10008.5.1.4.1.2.3.3"}
)
# the index level a query level searches (patients are derived from studies grouped by PatientID)
QIDO_LEVEL: dict[QueryLevel, Level] = {
    "PATIENT": "study",
    "STUDY": "study",
    "SERIES": "series",
    "IMAGE": "instance",
}
LEVEL_RANK: dict[QueryLevel, int] = {"PATIENT": 0, "STUDY": 1, "SERIES": 2, "IMAGE": 3}

# statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_OPTIONAL_KEYS_UNSUPPORTED = 0xFF01
CANCELLED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700
MOVE_DESTINATION_UNKNOWN = 0xA801
ALL_SUBOPERATIONS_FAILED = 0xA702
SOME_SUBOPERATIONS_FAILED = 0xB000

_ERROR_COMMENT_MAX = 64  # ErrorComment is LO
QUERY_RETRIEVE_LEVEL = 0x00080052


class IdentifierError(Exception):
    """A request identifier this SCP cannot process: answered with `status` and an ErrorComment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def failure_status(status: int, comment: str) -> Dataset:
    """A status data set with an ErrorComment: LO in the default repertoire, at most 64 characters."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = error_comment(comment)
    return ds


def error_comment(comment: str) -> str:
    """An ErrorComment value: LO in the default repertoire, at most 64 characters."""
    text = comment.encode("ascii", "replace").decode("ascii")
    return text if len(text) <= _ERROR_COMMENT_MAX else text[: _ERROR_COMMENT_MAX - 3] + "..."


def query_level(identifier: Dataset, sop_class: str) -> QueryLevel:
    """The identifier's QueryRetrieveLevel, checked against the request's information model."""
    levels = MODEL_LEVELS.get(sop_class)
    if levels is None:
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, "unsupported query/retrieve information model")
    elem = identifier.get(QUERY_RETRIEVE_LEVEL)
    raw = element_text(elem) if elem is not None else ""
    level = raw.strip().upper()
    if not level:
        raise IdentifierError(IDENTIFIER_DOES_NOT_MATCH, "QueryRetrieveLevel is required")
    if level not in levels:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level[:16]} is not a level of this model"
        )
    return level  # type: ignore[return-value]


def element_text(elem: DataElement) -> str:
    """A value as a QIDO parameter: multiple values joined with a backslash (a UID list), person names
    as their PS3.5 string (component groups joined with '='), numbers as digits; empty when empty."""
    value: Any = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join("" if v is None else str(v) for v in value)
    if isinstance(value, bytes):
        # a value pydicom left undecoded (UN, or an unknown VR): text in the default repertoire
        return value.decode("ascii", "replace").rstrip("\x00 ")
    return str(value)


def top_level_elements(identifier: Dataset) -> Iterator[DataElement]:
    """The identifier's elements (command and file meta groups never belong in one)."""
    for elem in identifier:
        if elem.tag.group > 0x0002:
            yield elem


def run_checked(action: Callable[[], Any], what: str) -> Any:
    """Run `action`; any error from reading the identifier (a deferred decode that fails) becomes an
    IdentifierError instead of escaping the handler."""
    try:
        return action()
    except IdentifierError:
        raise
    except Exception:
        raise IdentifierError(UNABLE_TO_PROCESS, f"the {what} could not be decoded") from None
