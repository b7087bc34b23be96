"""DICOM status codes dicomd answers with: the STOW-RS failure and warning reasons of a part (FailureReason
(0008,1197) and WarningReason (0008,1196), PS3.18 10.5.3), in one table of code, name and meaning.

The codes are PS3.4 Annex B.2.3 / PS3.7 Annex C statuses, and two that the Azure DICOM service added
(0xA901, 0xB00E) and that its clients expect; the meanings say when dicomd gives each (the conformance
statement lists the same cases)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
VALIDATION_FAILURE = 0xA900
STUDY_UID_MISMATCH = 0xA901
ALREADY_EXISTS = 0xB00E
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


@dataclass(frozen=True, slots=True)
class Status:
    code: int
    category: Literal["Failure", "Warning"]
    name: str
    meaning: str


def _table(*statuses: Status) -> Mapping[int, Status]:
    return MappingProxyType({s.code: s for s in statuses})


STOW_STATUSES: Mapping[int, Status] = _table(
    Status(
        PROCESSING_FAILURE,
        "Failure",
        "Processing failure",
        "the part is not a readable DICOM file or not application/dicom, the multipart body is malformed, "
        "or a fault other than a full disk stopped the instance from being stored",
    ),
    Status(
        OUT_OF_RESOURCES,
        "Failure",
        "Out of resources",
        "the disk or quota of the object store or of the index is full; the sender may retry later",
    ),
    Status(
        VALIDATION_FAILURE,
        "Failure",
        "Data set does not match SOP class",
        "validation failed: a key UID is missing or invalid, PatientID is missing or empty (v1), or the "
        "SOP Instance UID is already stored under another study or series",
    ),
    Status(
        STUDY_UID_MISMATCH,
        "Failure",
        "Study Instance UID mismatch",
        "the instance's StudyInstanceUID is not the study of the URL (POST /studies/{study})",
    ),
    Status(
        ALREADY_EXISTS,
        "Failure",
        "Instance already exists",
        "an instance with this SOP Instance UID is already stored with other content "
        '(duplicate_policy = "reject")',
    ),
    Status(
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "Warning",
        "Data set does not match SOP class",
        "stored, but the instance breaks the standard somewhere (an optional attribute left out of the "
        "index, a UID against PS3.5 9.1, PatientID missing in v2, an unknown character set); the "
        "comments say where",
    ),
)
