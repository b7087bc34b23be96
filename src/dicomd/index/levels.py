"""Which top-level DICOM attributes belong to the study, series or instance level of the index.

The split follows the Study Root information model of PS3.4 Annex C.6.2 (study / series / image
levels) and the PS3.3 modules that define the attributes: Patient (C.7.1.1), General Study (C.7.2.1)
and Patient Study (C.7.2.2) are study-level; General Series (C.7.3.1), General Equipment (C.7.5.1),
Frame of Reference (C.7.4.1) and the performed procedure step attributes are series-level; all the
rest (Image, SOP Common, modality specific modules) is instance-level. Attributes of the same entity
are expected to be identical for every instance of that entity, so the index keeps one copy per
study/series row (taken from the newest instance) instead of repeating it on every instance row.
"""

from __future__ import annotations

from typing import Literal

from dicomd.dicom.tags import (
    ACCESSION_NUMBER,
    BODY_PART_EXAMINED,
    MANUFACTURER_MODEL_NAME,
    MODALITY,
    PERFORMED_PROCEDURE_STEP_START_DATE,
    PERFORMED_PROCEDURE_STEP_START_TIME,
    REFERRING_PHYSICIAN_NAME,
    REQUEST_ATTRIBUTES_SEQUENCE,
    SERIES_DESCRIPTION,
    SERIES_INSTANCE_UID,
    SERIES_NUMBER,
    STUDY_DATE,
    STUDY_DESCRIPTION,
    STUDY_ID,
    STUDY_INSTANCE_UID,
    STUDY_TIME,
    TIMEZONE_OFFSET_FROM_UTC,
)

Level = Literal["study", "series", "instance"]

# The tags dicomd reads by name elsewhere are the dicomd.dicom.tags constants; the others, members of
# these tables only, are spelled here with their keyword.

# Patient + General Study + Patient Study modules. Every group 0010 attribute is also study-level
# (see level_of) except the few listed in SERIES_TAGS.
STUDY_TAGS: frozenset[str] = frozenset(
    {
        STUDY_DATE,
        STUDY_TIME,
        ACCESSION_NUMBER,
        "00080051",  # IssuerOfAccessionNumberSequence
        REFERRING_PHYSICIAN_NAME,
        "00080092",  # ReferringPhysicianAddress
        "00080094",  # ReferringPhysicianTelephoneNumbers
        "00080096",  # ReferringPhysicianIdentificationSequence
        TIMEZONE_OFFSET_FROM_UTC,  # same for a whole study in practice; a QIDO study default
        STUDY_DESCRIPTION,
        "00081032",  # ProcedureCodeSequence
        "00081048",  # PhysiciansOfRecord
        "00081049",  # PhysiciansOfRecordIdentificationSequence
        "00081060",  # NameOfPhysiciansReadingStudy
        "00081062",  # PhysiciansReadingStudyIdentificationSequence
        "00081080",  # AdmittingDiagnosesDescription
        "00081084",  # AdmittingDiagnosesCodeSequence
        "00081110",  # ReferencedStudySequence
        "00081120",  # ReferencedPatientSequence
        STUDY_INSTANCE_UID,
        STUDY_ID,
        "00321032",  # RequestingPhysician
        "00321033",  # RequestingService
        "00321060",  # RequestedProcedureDescription
        "00321064",  # RequestedProcedureCodeSequence
        "00380010",  # AdmissionID
        "00380014",  # IssuerOfAdmissionIDSequence
        "00380060",  # ServiceEpisodeID
        "00380062",  # ServiceEpisodeDescription
    }
)

# General Series + General Equipment + Frame of Reference + performed procedure step attributes.
SERIES_TAGS: frozenset[str] = frozenset(
    {
        "00080021",  # SeriesDate
        "00080031",  # SeriesTime
        MODALITY,
        "00080070",  # Manufacturer
        "00080080",  # InstitutionName
        "00080081",  # InstitutionAddress
        "00081010",  # StationName
        SERIES_DESCRIPTION,
        "0008103F",  # SeriesDescriptionCodeSequence
        "00081040",  # InstitutionalDepartmentName
        "00081050",  # PerformingPhysicianName
        "00081052",  # PerformingPhysicianIdentificationSequence
        "00081070",  # OperatorsName
        "00081072",  # OperatorIdentificationSequence
        MANUFACTURER_MODEL_NAME,
        "00081111",  # ReferencedPerformedProcedureStepSequence
        "00081250",  # RelatedSeriesSequence
        "00102210",  # AnatomicalOrientationType (General Series module despite group 0010)
        BODY_PART_EXAMINED,
        "00181000",  # DeviceSerialNumber
        "00181020",  # SoftwareVersions
        "00181030",  # ProtocolName
        "00185100",  # PatientPosition
        SERIES_INSTANCE_UID,
        SERIES_NUMBER,
        "00200052",  # FrameOfReferenceUID
        "00200060",  # Laterality
        "00201040",  # PositionReferenceIndicator
        PERFORMED_PROCEDURE_STEP_START_DATE,
        PERFORMED_PROCEDURE_STEP_START_TIME,
        "00400250",  # PerformedProcedureStepEndDate
        "00400251",  # PerformedProcedureStepEndTime
        "00400253",  # PerformedProcedureStepID
        "00400254",  # PerformedProcedureStepDescription
        "00400260",  # PerformedProtocolCodeSequence
        REQUEST_ATTRIBUTES_SEQUENCE,
        "00400280",  # CommentsOnThePerformedProcedureStep
    }
)


def level_of(tag: str) -> Level:
    """Level of a top-level attribute given as upper-case "GGGGEEEE" (SpecificCharacterSet: see split)."""
    if tag in SERIES_TAGS:
        return "series"
    if tag in STUDY_TAGS or tag.startswith("0010"):
        return "study"
    return "instance"
