"""Study retrieve and study metadata read their objects in batches (``ObjectStore.read_many``: concurrent
GETs on a cloud store): the answers stay byte-exact and in index order on every backend, and a damaged or
deleted object in the middle of a batch is handled as a lone read handles it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicomd.storage import METADATA
from dicomd.storage.cloud import CloudObjectStore

from support.dicom_files import make_instance, new_uid
from support.dicomweb import DICOM_ANY, parse_multipart, stow, unique_id, value
from support.emulators import emulator_for
from support.server import Server, start_server, stop_server

SOP_INSTANCE_UID = "00080018"
JSON = {"Accept": "application/dicom+json"}


def _store_study(client: httpx.Client, per_series: int = 20) -> tuple[str, dict[str, bytes]]:
    study, patient = new_uid(), unique_id("BATCH")
    files: dict[str, bytes] = {}
    for series in (new_uid(), new_uid()):
        for n in range(per_series):
            sop = new_uid()
            files[sop] = make_instance(
                study=study, series=series, sop=sop, patient_id=patient, InstanceNumber=n + 1
            )
    assert stow(client, list(files.values())).status_code == 200
    return study, files


def _sop_of(part: bytes, files: dict[str, bytes]) -> str:
    # the stored file is the sent one (a preamble may come back zeroed)
    (sop,) = [sop for sop, sent in files.items() if part[128:] == sent[128:]]
    return sop


def test_a_study_retrieve_and_its_metadata_are_byte_exact_in_index_order(client: httpx.Client) -> None:
    study, files = _store_study(client)

    r = client.get(f"/studies/{study}/metadata", headers=JSON)
    assert r.status_code == 200, r.text
    order = [value(item, SOP_INSTANCE_UID) for item in r.json()]
    assert sorted(order) == sorted(files)
    # each instance's object, byte for byte, in the index's order (a read of one object is no batch)
    singles = []
    for item in r.json():
        one = client.get(
            f"/studies/{study}/series/{value(item, '0020000E')}/instances/{value(item, SOP_INSTANCE_UID)}"
            "/metadata",
            headers=JSON,
        )
        assert one.status_code == 200
        singles.append(one.content[1:-1])  # without the array's brackets
    assert r.content == b"[" + b",".join(singles) + b"]"

    r = client.get(f"/studies/{study}", headers={"Accept": DICOM_ANY})
    assert r.status_code == 200
    parts = parse_multipart(r)
    assert [_sop_of(body, files) for _, body in parts] == order  # every file whole, same order


@pytest.fixture
def s3_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Server, CloudObjectStore]]:
    """A server of its own on S3 (moto), with a handle on its bucket to damage objects."""
    url, options = emulator_for(request, "s3").new_store()
    server = start_server(
        tmp_path / "data", "--storage-url", url, workers=1, env={"DICOMD_STORAGE_OPTIONS": options}
    )
    bucket = CloudObjectStore(url, options, staging_dir=tmp_path / "bucket-staging", timeout=10)
    yield server, bucket
    bucket.close()
    stop_server(server)


def _key_of(bucket: CloudObjectStore, sop: str) -> str:
    (key,) = [k for k in bucket.iter_stored(0) if sop.encode() in bucket.read(k, METADATA)]
    return key


def test_a_damaged_metadata_object_in_a_batch_is_rebuilt_and_a_deleted_one_is_a_404(
    s3_server: tuple[Server, CloudObjectStore],
) -> None:
    server, bucket = s3_server
    with httpx.Client(base_url=server.v2, timeout=30) as client:
        study, files = _store_study(client, per_series=5)
        sops = list(files)
        damaged, deleted = _key_of(bucket, sops[3]), _key_of(bucket, sops[-2])
        intact = bucket.read(damaged, METADATA)
        bucket.replace_derived(damaged, METADATA, intact[: len(intact) // 2])  # cut short

        r = client.get(f"/studies/{study}/metadata", headers=JSON)
        assert r.status_code == 200, r.text
        assert sorted(value(item, SOP_INSTANCE_UID) for item in r.json()) == sorted(sops)
        item = next(i for i in r.json() if value(i, SOP_INSTANCE_UID) == sops[3])
        prefix = f"{server.v2}/studies/{study}/series/{value(item, '0020000E')}/instances/{sops[3]}/"
        rebuilt = intact[:-1].replace(b'"BulkDataURI":"', b'"BulkDataURI":"' + prefix.encode())
        assert rebuilt in r.content  # the same object as stored, byte for byte
        assert bucket.read(damaged, METADATA) == intact  # and put back whole

        bucket.delete(deleted)
        # gone under a retrieve: the study's small instances are read in one batch before the response
        # starts, so the answer is a 404 rather than a 200 cut short
        gone = client.get(f"/studies/{study}", headers={"Accept": DICOM_ANY})
        assert gone.status_code == 404 and "deleted" in gone.json()["message"], gone.text
