"""Builders for the index tests: hand-made parsed instances (DICOM JSON as the production parser yields
it) and real files converted by pydicom, added to a migrated index on a backend of support.backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dicomd.dicom.model import ByteRange, JsonDataset, ParsedInstance
from dicomd.index import Index, NewInstance

from support.backends import backend_url

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@contextmanager
def open_index(backend: str, tmp_path: Path) -> Iterator[Index]:
    with backend_url(backend, tmp_path) as url:
        idx = Index(url)
        try:
            idx.migrate()
            yield idx
        finally:
            idx.close()


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def pn(alphabetic: str, ideographic: str | None = None, phonetic: str | None = None) -> dict[str, Any]:
    value: dict[str, str] = {"Alphabetic": alphabetic}
    if ideographic:
        value["Ideographic"] = ideographic
    if phonetic:
        value["Phonetic"] = phonetic
    return {"vr": "PN", "Value": [value]}


def make_parsed(
    study: str = "1.2.3",
    series: str = "1.2.3.1",
    sop: str = "1.2.3.1.1",
    *,
    sop_class: str = CT_IMAGE,
    patient_name: str | dict[str, Any] | None = "Doe^John",
    patient_id: str = "P1",
    study_date: str | None = "20200115",
    study_time: str | None = "101500",
    modality: str | None = "CT",
    series_number: int | None = 1,
    instance_number: int | None = 1,
    frames: int = 1,
    extra: JsonDataset | None = None,
) -> ParsedInstance:
    """A small hand-made instance (DICOM JSON as the production parser yields it)."""
    ds: JsonDataset = {
        "00080005": el("CS", "ISO_IR 100"),
        "00080016": el("UI", sop_class),
        "00080018": el("UI", sop),
        "0020000D": el("UI", study),
        "0020000E": el("UI", series),
        "00100020": el("LO", patient_id),
        "00280010": el("US", 4),
        "00280011": el("US", 4),
        "00280100": el("US", 16),
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"},
    }
    if patient_name is not None:
        ds["00100010"] = pn(patient_name) if isinstance(patient_name, str) else patient_name
    if study_date is not None:
        ds["00080020"] = el("DA", study_date)
    if study_time is not None:
        ds["00080030"] = el("TM", study_time)
    if modality is not None:
        ds["00080060"] = el("CS", modality)
    if series_number is not None:
        ds["00200011"] = el("IS", series_number)
    if instance_number is not None:
        ds["00200013"] = el("IS", instance_number)
    if frames > 1:
        ds["00280008"] = el("IS", frames)
    ds.update(extra or {})
    frame_len = 32
    return ParsedInstance(
        transfer_syntax_uid=EXPLICIT_LE,
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid=sop_class,
        dataset=ds,
        bulk={"7FE00010": ByteRange(1000, frame_len * frames)},
        frames=[[ByteRange(1000 + i * frame_len, frame_len)] for i in range(frames)],
        number_of_frames=frames,
        dataset_offset=132,
        file_length=1000 + frame_len * frames,
    )


def from_pydicom(path: str | Path) -> ParsedInstance:
    """Test-only conversion of a real file (pydicom decodes its character set for us)."""
    import pydicom

    ds = pydicom.dcmread(path)
    # fill identity when charset test files lack it
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]
    ds.StudyInstanceUID = (
        ds.get("StudyInstanceUID") or "1.2.826.0.1.3680043.8.498.1." + str(uuid.uuid4().int)[:20]
    )
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or ds.StudyInstanceUID + ".1"
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = CT_IMAGE
    data = ds.to_json_dict(bulk_data_threshold=256, bulk_data_element_handler=lambda _e: "bulkdata/x")
    data.pop("7FE00010", None)
    return ParsedInstance(
        transfer_syntax_uid=str(getattr(ds.file_meta, "TransferSyntaxUID", EXPLICIT_LE)),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        dataset=data,
    )


def new(parsed: ParsedInstance, object_key: str | None = None, partition_key: int = 1) -> NewInstance:
    return NewInstance(partition_key, parsed, object_key or "obj-" + uuid.uuid4().hex, 1234)


def add(idx: Index, *parsed: ParsedInstance, overwrite: bool = False) -> list[str]:
    return [r.status for r in idx.add_instances([new(p) for p in parsed], overwrite=overwrite)]
