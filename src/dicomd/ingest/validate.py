"""Checks an instance must pass before it is stored (PS3.18 10.5, Azure v1/v2 conformance)."""

from __future__ import annotations

from dataclasses import dataclass

from dicomd.dicom.model import ParsedInstance
from dicomd.dicom.status import STUDY_UID_MISMATCH, VALIDATION_FAILURE
from dicomd.dicom.tags import (
    PATIENT_ID,
    SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
)
from dicomd.dicom.uids import is_valid_uid, uid_problem

_REQUIRED_UIDS = (
    (STUDY_INSTANCE_UID, "StudyInstanceUID", "study_instance_uid"),
    (SERIES_INSTANCE_UID, "SeriesInstanceUID", "series_instance_uid"),
    (SOP_INSTANCE_UID, "SOPInstanceUID", "sop_instance_uid"),
    (SOP_CLASS_UID, "SOPClassUID", "sop_class_uid"),
)


@dataclass(slots=True)
class Rejection:
    reason: int
    messages: list[str]


def validate(parsed: ParsedInstance, *, url_study: str | None, version: int) -> Rejection | None:
    """Return why the instance must be rejected, or None. Optional attributes never reject (v2).

    What the field's archives store although it breaks the standard a little (a leading zero in a UID
    component, no PatientID in v2) is accepted with a warning added to ``parsed.warnings``; what would
    make the instance unsafe or unfindable (a key UID missing, empty, over 64 characters or with
    characters other than digits and dots) is refused."""
    problems: list[str] = []
    notes: list[str] = []
    for _tag, keyword, field in _REQUIRED_UIDS:
        value: str = getattr(parsed, field)
        if not value:
            # the parser drops an invalid UID with a warning naming it; report that rather than "missing"
            why = [w for w in parsed.warnings if keyword in w]
            problems.append(why[0] if why else f"{keyword} is missing or empty")
        elif not is_valid_uid(value):
            problems.append(f"{keyword} '{value}' is not a valid UID (digits and dots, at most 64)")
        elif (problem := uid_problem(value)) is not None:
            notes.append(f"{keyword} '{value}' {problem} (PS3.5 9.1); stored and searchable as sent")
    patient_id = parsed.dataset.get(PATIENT_ID)
    if patient_id is None:
        if version == 1:
            problems.append("PatientID is missing")
        else:
            notes.append("PatientID is missing; stored, findable by its other attributes")
    elif version == 1 and not patient_id.get("Value"):
        problems.append("PatientID is empty")
    if problems:
        return Rejection(VALIDATION_FAILURE, problems)
    if url_study is not None and parsed.study_instance_uid != url_study:
        return Rejection(
            STUDY_UID_MISMATCH,
            [f"StudyInstanceUID '{parsed.study_instance_uid}' does not match the study in the URL"],
        )
    parsed.warnings.extend(notes)
    return None
