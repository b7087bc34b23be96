"""The DICOM tags dicomd reads or writes by name, in one place.

Each attribute is named after its keyword and spelled as its DICOM JSON key, "GGGGEEEE" in upper-case
hex (PS3.18 F.2), the form data sets are keyed by. Where the parser compares tags as numbers the int form
is here too, with a ``_TAG`` suffix.
"""

from __future__ import annotations

# -- File Meta Information ----------------------------------------------------------------------------
TRANSFER_SYNTAX_UID = "00020010"

# -- SOP Common, identity -----------------------------------------------------------------------------
SPECIFIC_CHARACTER_SET = "00080005"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
INSTANCE_NUMBER = "00200013"

# -- Patient ------------------------------------------------------------------------------------------
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"

# -- Study --------------------------------------------------------------------------------------------
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
ACCESSION_NUMBER = "00080050"
REFERRING_PHYSICIAN_NAME = "00080090"
TIMEZONE_OFFSET_FROM_UTC = "00080201"
STUDY_DESCRIPTION = "00081030"
STUDY_ID = "00200010"

# -- Series -------------------------------------------------------------------------------------------
MODALITY = "00080060"
SERIES_DESCRIPTION = "0008103E"
MANUFACTURER_MODEL_NAME = "00081090"
BODY_PART_EXAMINED = "00180015"
SERIES_NUMBER = "00200011"
PERFORMED_PROCEDURE_STEP_START_DATE = "00400244"
PERFORMED_PROCEDURE_STEP_START_TIME = "00400245"
REQUEST_ATTRIBUTES_SEQUENCE = "00400275"

# -- DICOMweb responses -------------------------------------------------------------------------------
RETRIEVE_URL = "00081190"

# -- Image Pixel, Multi-frame -------------------------------------------------------------------------
SAMPLES_PER_PIXEL = "00280002"
PHOTOMETRIC_INTERPRETATION = "00280004"
NUMBER_OF_FRAMES = "00280008"
ROWS = "00280010"
COLUMNS = "00280011"
BITS_ALLOCATED = "00280100"
FLOAT_PIXEL_DATA = "7FE00008"
DOUBLE_FLOAT_PIXEL_DATA = "7FE00009"
PIXEL_DATA = "7FE00010"
# the three pixel data elements, always bulk data whatever the threshold
PIXEL_DATA_KEYS = frozenset((FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA, PIXEL_DATA))

# -- int forms, for the parser ------------------------------------------------------------------------
SPECIFIC_CHARACTER_SET_TAG = 0x00080005
BITS_ALLOCATED_TAG = 0x00280100
PIXEL_REPRESENTATION_TAG = 0x00280103
LUT_DESCRIPTOR_TAG = 0x00283002  # LUT Data's VR depends on its first value
LUT_DATA_TAG = 0x00283006
WAVEFORM_BITS_ALLOCATED_TAG = 0x54001004
EXTENDED_OFFSET_TABLE_TAG = 0x7FE00001
PIXEL_DATA_TAG = 0x7FE00010
PIXEL_DATA_TAGS = frozenset(int(key, 16) for key in PIXEL_DATA_KEYS)

# -- encoding: items and delimiters of sequences and encapsulated data (PS3.5 7.5) ---------------------
ITEM_TAG = 0xFFFEE000
ITEM_DELIMITATION_TAG = 0xFFFEE00D
SEQUENCE_DELIMITATION_TAG = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF  # not a tag: the value length of a delimited sequence, item or value
