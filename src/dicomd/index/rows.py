"""Index rows of an instance (Index.prepare): level split, attrs JSON, normalised column values.

Pure CPU, no database, run for every stored instance outside the writer lock; the loops are kept
inline for that reason. Also the study_name_key rows a study's name columns stand for.
"""

from __future__ import annotations

from typing import Any

import orjson

from dicomd.dicom.model import JsonDataset
from dicomd.dicom.tags import (
    ACCESSION_NUMBER,
    BODY_PART_EXAMINED,
    INSTANCE_NUMBER,
    MANUFACTURER_MODEL_NAME,
    MODALITY,
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    PATIENT_SEX,
    PERFORMED_PROCEDURE_STEP_START_DATE,
    PERFORMED_PROCEDURE_STEP_START_TIME,
    REFERRING_PHYSICIAN_NAME,
    SERIES_DESCRIPTION,
    SERIES_NUMBER,
    SPECIFIC_CHARACTER_SET,
    STUDY_DATE,
    STUDY_DESCRIPTION,
    STUDY_ID,
    STUDY_TIME,
)
from dicomd.index.frames import encode_frames
from dicomd.index.levels import level_of
from dicomd.index.normalize import (
    LONG_VRS,
    MAX_UNMEASURED_VALUES,
    first_int,
    first_str,
    keep_tag,
    keep_value,
    name_keys,
    norm_date,
    norm_time,
    pn_norm,
    pn_words,
)
from dicomd.index.schema import (
    NAME_PATIENT_GROUP,
    NAME_PATIENT_WORD,
    NAME_REFERRING_GROUP,
    NAME_REFERRING_WORD,
)
from dicomd.index.types import NewInstance, PreparedInstance

_ALL_LEVELS = 3  # SpecificCharacterSet: copied to every level

# _tag_place results by tag. A plain dict rather than functools.lru_cache: _split_levels looks up
# every element of every stored instance, and an inline dict.get is cheaper than a call through
# lru_cache. Bounded: when full it starts over, so that files with many distinct (e.g. private)
# tags cost recomputation instead of memory.
_PLACE_CACHE_SIZE = 16384
_PLACES: dict[str, int] = {}


def _tag_place(tag: str) -> int:
    """Where a top-level attribute goes: 0 study, 1 series, 2 instance, _ALL_LEVELS, -1 nowhere."""
    place = _PLACES.get(tag)
    if place is None:
        if not keep_tag(tag):
            place = -1
        elif tag == SPECIFIC_CHARACTER_SET:
            place = _ALL_LEVELS
        else:
            place = ("study", "series", "instance").index(level_of(tag))
        if len(_PLACES) >= _PLACE_CACHE_SIZE:
            _PLACES.clear()
        _PLACES[tag] = place
    return place


def _split_levels(ds: JsonDataset) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    levels: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
    places = _PLACES
    for tag, element in ds.items():
        # this loop runs for every element of every stored instance: the common cases are inline
        try:
            place = places[tag]
        except KeyError:
            place = _tag_place(tag)
        if place < 0:
            continue
        # keep_value returns most elements as they are (a value, not a sequence nor a VR that can
        # be long, few values); only the others need it
        values = element.get("Value")
        if values is None or element.get("vr") in LONG_VRS or len(values) > MAX_UNMEASURED_VALUES:
            kept = keep_value(element)
            if kept is None:
                continue
            element = kept
        if place == _ALL_LEVELS:
            for attrs in levels:
                attrs[tag] = element
        else:
            levels[place][tag] = element
    return levels


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


# the columns study_values and series_values give, in their order (the writer reads them back to
# leave unchanged ones out of its UPDATEs)
STUDY_VALUE_COLUMNS = (
    "patient_id",
    "patient_name",
    "patient_name_norm",
    "patient_name_words",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "referring_physician_name",
    "referring_physician_name_norm",
    "referring_physician_name_words",
    "study_date",
    "study_time",
    "study_id",
    "study_description",
    "attrs",
)
SERIES_VALUE_COLUMNS = (
    "modality",
    "series_number",
    "series_description",
    "performed_procedure_step_start_date",
    "performed_procedure_step_start_time",
    "body_part_examined",
    "manufacturer_model_name",
    "attrs",
)


def study_values(ds: JsonDataset, attrs: dict[str, Any]) -> dict[str, Any]:
    patient = first_str(ds.get(PATIENT_NAME)) or ""
    referring = first_str(ds.get(REFERRING_PHYSICIAN_NAME)) or ""
    birth = first_str(ds.get(PATIENT_BIRTH_DATE))
    sdate = first_str(ds.get(STUDY_DATE))
    stime = first_str(ds.get(STUDY_TIME))
    return {
        "patient_id": first_str(ds.get(PATIENT_ID)),
        "patient_name": patient or None,
        "patient_name_norm": pn_norm(patient) or None,
        "patient_name_words": pn_words(patient) or None,
        "patient_birth_date": norm_date(birth) if birth else None,
        "patient_sex": first_str(ds.get(PATIENT_SEX)),
        "accession_number": first_str(ds.get(ACCESSION_NUMBER)),
        "referring_physician_name": referring or None,
        "referring_physician_name_norm": pn_norm(referring) or None,
        "referring_physician_name_words": pn_words(referring) or None,
        "study_date": norm_date(sdate) if sdate else None,
        "study_time": norm_time(stime) if stime else None,
        "study_id": first_str(ds.get(STUDY_ID)),
        "study_description": first_str(ds.get(STUDY_DESCRIPTION)),
        "attrs": dumps(attrs),
    }


def series_values(ds: JsonDataset, attrs: dict[str, Any]) -> dict[str, Any]:
    pdate = first_str(ds.get(PERFORMED_PROCEDURE_STEP_START_DATE))
    ptime = first_str(ds.get(PERFORMED_PROCEDURE_STEP_START_TIME))
    return {
        "modality": first_str(ds.get(MODALITY)),
        "series_number": first_int(ds.get(SERIES_NUMBER)),
        "series_description": first_str(ds.get(SERIES_DESCRIPTION)),
        "performed_procedure_step_start_date": norm_date(pdate) if pdate else None,
        "performed_procedure_step_start_time": norm_time(ptime) if ptime else None,
        "body_part_examined": first_str(ds.get(BODY_PART_EXAMINED)),
        "manufacturer_model_name": first_str(ds.get(MANUFACTURER_MODEL_NAME)),
        "attrs": dumps(attrs),
    }


def instance_values(item: NewInstance, attrs: dict[str, Any]) -> dict[str, Any]:
    p = item.parsed
    return {
        "sop_class_uid": p.sop_class_uid,
        "instance_number": first_int(p.dataset.get(INSTANCE_NUMBER)),
        "transfer_syntax_uid": p.transfer_syntax_uid,
        "object_key": item.object_key,
        "file_size": item.file_size,
        "number_of_frames": p.number_of_frames,
        "frames": encode_frames(p.frames),
        "bulk": dumps({path: [r.offset, r.length] for path, r in p.bulk.items()}),
        "attrs": dumps(attrs),
    }


def prepare_instance(item: NewInstance) -> PreparedInstance:
    """Index.prepare: level split, attrs JSON and normalised column values of one instance."""
    p = item.parsed
    study_attrs, series_attrs, instance_attrs = _split_levels(p.dataset)
    return PreparedInstance(
        item,
        study_values(p.dataset, study_attrs),
        series_values(p.dataset, series_attrs),
        instance_values(item, instance_attrs),
    )


_NAME_KEY_FIELDS = (
    ((NAME_PATIENT_GROUP, NAME_PATIENT_WORD), "patient_name_norm", "patient_name_words"),
    (
        (NAME_REFERRING_GROUP, NAME_REFERRING_WORD),
        "referring_physician_name_norm",
        "referring_physician_name_words",
    ),
)
# the study columns its name keys derive from: equal columns, equal keys
NAME_KEY_COLUMNS = tuple(column for _, *columns in _NAME_KEY_FIELDS for column in columns)


def study_name_keys(values: dict[str, Any]) -> set[tuple[int, str]]:
    """(field, key) rows of study_name_key for a study's column values (see normalize.name_keys)."""
    keys: set[tuple[int, str]] = set()
    for (group_field, word_field), norm, words_column in _NAME_KEY_FIELDS:
        groups, words = name_keys(values.get(norm), values.get(words_column))
        keys.update((group_field, g) for g in groups)
        keys.update((word_field, w) for w in words)
    return keys
