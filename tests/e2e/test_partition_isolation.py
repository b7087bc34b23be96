"""Data partitions end to end (a real `dicomd serve --partitions true`): two tenants and the default
partition hold the SAME UIDs, and no route crosses between them: search at every level, retrieve of
study / series / instance, metadata, frames, bulk data (its BulkDataURI followed), delete, the change feed
(v1 paging included); the URLs in every answer point into the partition they came from.

Tenant "a" and the default partition get byte-identical files (neither store is a duplicate of the
other); tenant "b" gets files with the same UIDs but another patient and other pixel values, so that an
answer from the wrong partition is seen."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydicom
import pytest

from support.backends import BACKENDS, backend_url
from support.dicom_files import make_instance, new_uid
from support.dicomweb import (
    DICOM_ANY,
    OCTET_ANY,
    RETRIEVE_URL,
    parse_multipart,
    referenced_items,
    stow,
    unique_id,
    value,
)
from support.server import Server, start_server, stop_server

PATIENT_ID, NUMBER_OF_STUDY_INSTANCES = "00100020", "00201208"
ROWS = COLUMNS = 32  # 2 KiB frames: the pixel data is bulk data (above the 1 KiB default threshold)
FRAMES = 2


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp(f"partitions-{request.param}") / "data"
    with backend_url(request.param, data_dir.parent) as url:
        srv = start_server(data_dir, "--index-url", url, "--partitions", "true")
        yield srv
        stop_server(srv)


@dataclass
class Tenant:
    """What one partition holds of the shared study: its files by SOP Instance UID and series."""

    name: str
    base: str  # e.g. http://127.0.0.1:port/v2/partitions/a
    patient: str
    files: dict[str, bytes] = field(default_factory=dict)
    series_of: dict[str, str] = field(default_factory=dict)  # sop -> series

    def sops(self, series: str | None = None) -> set[str]:
        return {sop for sop, se in self.series_of.items() if series is None or se == series}


@dataclass
class SharedStudy:
    study: str
    series: tuple[str, str]
    sops: tuple[str, str, str]  # the first two in series[0], the third in series[1]
    tenants: dict[str, Tenant]


def _files(study: str, series: tuple[str, ...], sops: tuple[str, ...], patient: str, seed: int) -> Any:
    layout = zip((series[0], series[0], series[1]), sops, strict=False)
    for number, (se, sop) in enumerate(layout, 1):
        pixels = bytes((seed + i) % 251 for i in range(ROWS * COLUMNS * 2 * FRAMES))
        data = make_instance(
            study=study,
            series=se,
            sop=sop,
            patient_id=patient,
            rows=ROWS,
            columns=COLUMNS,
            frames=FRAMES,
            InstanceNumber=number,
            AccessionNumber="ACC1",
            PixelData=pixels,
        )
        yield se, sop, data


def _store_shared(server: Server, names: dict[str, str]) -> SharedStudy:
    """The same study in the partitions ``names`` maps (role -> partition name; role "b" gets other
    content, and one instance fewer)."""
    study, series, sops = new_uid(), (new_uid(), new_uid()), (new_uid(), new_uid(), new_uid())
    shared_patient = unique_id()
    tenants: dict[str, Tenant] = {}
    for role, name in names.items():
        prefix = "/v2" if name == "default" else f"/v2/partitions/{name}"
        patient, seed, count = (unique_id(), 7, 2) if role == "b" else (shared_patient, 0, 3)
        tenant = Tenant(name, server.url + prefix, patient)
        for se, sop, data in _files(study, series, sops[:count], patient, seed):
            tenant.files[sop], tenant.series_of[sop] = data, se
        with httpx.Client(base_url=tenant.base, timeout=30) as client:
            r = stow(client, list(tenant.files.values()))
            assert r.status_code == 200, (name, r.text)  # stored, not a duplicate of another partition's
            assert len(referenced_items(r.json())) == count
            assert value(r.json(), RETRIEVE_URL) == f"{tenant.base}/studies/{study}"
        tenants[role] = tenant
    return SharedStudy(study, series, sops, tenants)


def _fresh_names() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"a": f"tenant-a.{suffix}", "b": f"tenant_b-{suffix}", "default": "default"}


@pytest.fixture(scope="module")
def shared(server: Server) -> SharedStudy:
    return _store_shared(server, _fresh_names())


def _get(url: str, **kwargs: Any) -> httpx.Response:
    r = httpx.get(url, timeout=30, **kwargs)
    assert r.status_code == 200, (r.status_code, r.text)
    return r


def test_partitions_are_listed(server: Server, shared: SharedStudy) -> None:
    listed = _get(server.v2 + "/partitions").json()
    names = [p["partitionName"] for p in listed]
    assert names[0] == "default"
    assert {t.name for t in shared.tenants.values()} <= set(names)
    assert len({p["partitionKey"] for p in listed}) == len(listed)
    assert _get(server.v1 + "/partitions").json() == listed


def test_search_at_every_level_stays_in_the_partition(shared: SharedStudy) -> None:
    study, (se1, se2) = shared.study, shared.series
    for tenant in shared.tenants.values():
        [found] = _get(tenant.base + "/studies", params={"StudyInstanceUID": study}).json()
        assert value(found, PATIENT_ID) == tenant.patient
        assert value(found, NUMBER_OF_STUDY_INSTANCES) == len(tenant.files)
        assert value(found, RETRIEVE_URL) == f"{tenant.base}/studies/{study}"
        # by the patient: only this partition's copy (a and default share the patient: one each)
        assert len(_get(tenant.base + "/studies", params={"PatientID": tenant.patient}).json()) == 1
        paths = [("/instances", tenant.sops()), (f"/studies/{study}/instances", tenant.sops())]
        paths += [
            (f"/studies/{study}/series/{se}/instances", tenant.sops(se))
            for se in (se1, se2)
            if tenant.sops(se)
        ]
        for path, expected in paths:
            answer = _get(
                tenant.base + path, params={"StudyInstanceUID": study} if path == "/instances" else {}
            )
            assert {value(d, "00080018") for d in answer.json()} == expected, (tenant.name, path)
            for d in answer.json():
                assert value(d, RETRIEVE_URL).startswith(f"{tenant.base}/studies/{study}/series/")
        series = _get(tenant.base + f"/studies/{study}/series").json()
        assert {value(d, "0020000E") for d in series} == set(tenant.series_of.values())
        for d in series:
            assert value(d, RETRIEVE_URL).startswith(f"{tenant.base}/studies/{study}/series/")
        top_series = _get(tenant.base + "/series", params={"StudyInstanceUID": study}).json()
        assert {value(d, "0020000E") for d in top_series} == set(tenant.series_of.values())
    # an instance "b" lacks is not found there, though the other partitions hold it
    b = shared.tenants["b"]
    r = httpx.get(f"{b.base}/studies/{study}/series/{se2}/instances", timeout=30)
    assert r.status_code in (200, 204, 404), r.text
    assert r.status_code != 200 or r.json() == []


def test_retrieve_metadata_frames_and_bulk_data_stay_in_the_partition(shared: SharedStudy) -> None:
    study, (se1, _) = shared.study, shared.series
    for tenant in shared.tenants.values():
        accept = {"Accept": DICOM_ANY}
        bodies = [body for _, body in parse_multipart(_get(f"{tenant.base}/studies/{study}", headers=accept))]
        assert sorted(bodies) == sorted(tenant.files.values()), tenant.name
        series_url = f"{tenant.base}/studies/{study}/series/{se1}"
        bodies = [body for _, body in parse_multipart(_get(series_url, headers=accept))]
        assert sorted(bodies) == sorted(tenant.files[sop] for sop in tenant.sops(se1))
        sop = shared.sops[0]
        instance_url = f"{series_url}/instances/{sop}"
        [(_, body)] = parse_multipart(_get(instance_url, headers=accept))
        assert body == tenant.files[sop]
        pixels = pydicom.dcmread(io.BytesIO(tenant.files[sop])).PixelData
        frame_size = len(pixels) // FRAMES

        metadata = _get(f"{tenant.base}/studies/{study}/metadata").json()
        assert {value(d, "00080018") for d in metadata} == tenant.sops()
        assert {value(d, PATIENT_ID) for d in metadata} == {tenant.patient}
        [instance] = _get(instance_url + "/metadata").json()
        uri = instance["7FE00010"]["BulkDataURI"]
        assert uri.startswith(f"{instance_url}/bulkdata/"), uri
        [(_, bulk)] = parse_multipart(_get(uri, headers={"Accept": OCTET_ANY}))
        assert bulk == pixels, tenant.name

        [(_, frame)] = parse_multipart(_get(instance_url + "/frames/2", headers={"Accept": OCTET_ANY}))
        assert frame == pixels[frame_size:], tenant.name
    # v1 reaches the same partition
    a = shared.tenants["a"]
    v1_base = a.base.replace("/v2/", "/v1/")
    [(_, body)] = parse_multipart(
        _get(
            f"{v1_base}/studies/{study}/series/{se1}/instances/{shared.sops[0]}",
            headers={"Accept": DICOM_ANY},
        )
    )
    assert body == a.files[shared.sops[0]]
    [instance] = _get(f"{v1_base}/studies/{study}/series/{se1}/instances/{shared.sops[0]}/metadata").json()
    assert instance["7FE00010"]["BulkDataURI"].startswith(f"{v1_base}/studies/{study}/")


def test_delete_in_one_partition_leaves_the_others(server: Server) -> None:
    own = _store_shared(server, _fresh_names())
    a, b, default = own.tenants["a"], own.tenants["b"], own.tenants["default"]
    se2_instance = f"/studies/{own.study}/series/{own.series[1]}/instances/{own.sops[2]}"
    # an instance in "b" that it lacks: 404 there, though "a" and the default partition hold it
    assert httpx.delete(b.base + se2_instance, timeout=30).status_code == 404
    assert httpx.delete(a.base + se2_instance, timeout=30).status_code == 204
    assert httpx.get(a.base + se2_instance + "/metadata", timeout=30).status_code == 404
    assert httpx.get(default.base + se2_instance + "/metadata", timeout=30).status_code == 200
    assert httpx.delete(a.base + f"/studies/{own.study}", timeout=30).status_code == 204
    assert httpx.get(a.base + f"/studies/{own.study}/metadata", timeout=30).status_code == 404
    assert httpx.delete(a.base + f"/studies/{own.study}", timeout=30).status_code == 404
    for tenant in (b, default):
        metadata = _get(tenant.base + f"/studies/{own.study}/metadata").json()
        assert {value(d, "00080018") for d in metadata} == tenant.sops()
        [(_, body)] = parse_multipart(
            _get(
                tenant.base + f"/studies/{own.study}/series/{own.series[0]}/instances/{own.sops[0]}",
                headers={"Accept": DICOM_ANY},
            )
        )
        assert body == tenant.files[own.sops[0]]
    [found] = _get(default.base + "/studies", params={"StudyInstanceUID": own.study}).json()
    assert value(found, NUMBER_OF_STUDY_INSTANCES) == 3


def _feed(base: str, **params: Any) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = _get(base + "/changefeed", params=params).json()
    return entries


def test_change_feed_of_each_partition_lists_only_its_entries(server: Server) -> None:
    names = _fresh_names()
    own = _store_shared(server, names)
    a, b = own.tenants["a"], own.tenants["b"]
    assert httpx.delete(a.base + f"/studies/{own.study}", timeout=30).status_code == 204
    expected = {
        "a": [(sop, "create") for sop in own.sops] + [(sop, "delete") for sop in own.sops],
        "b": [(sop, "create") for sop in own.sops[:2]],
    }
    for role, tenant in (("a", a), ("b", b)):
        entries = _feed(tenant.base, includemetadata="false")
        assert {e["PartitionName"] for e in entries} == {tenant.name}
        assert sorted((e["SopInstanceUid"], e["Action"]) for e in entries) == sorted(expected[role])
        sequences = [e["Sequence"] for e in entries]
        assert sequences == sorted(sequences)
        # v1 pages by the last sequence seen: one entry a page walks the whole partition's feed, skipping
        # the sequence numbers of the other partitions' entries in between
        v1_base = tenant.base.replace("/v2/", "/v1/")
        paged: list[dict[str, Any]] = []
        offset = 0
        while page := _feed(v1_base, offset=offset, limit=1, includemetadata="false"):
            paged += page
            offset = page[-1]["Sequence"]
        assert [e["Sequence"] for e in paged] == sequences
        latest = _get(tenant.base + "/changefeed/latest", params={"includemetadata": "false"}).json()
        assert latest["Sequence"] == sequences[-1]
        assert latest["PartitionName"] == tenant.name
    # b's entries carry b's metadata, not the identical-UID instances of a or the default partition
    for entry in _feed(b.base):
        assert entry["State"] == "current"
        assert value(entry["Metadata"], PATIENT_ID) == b.patient
    # a's sequence numbers interleave with b's and the default partition's: the gaps are real
    default_entries = _feed(server.v2, includemetadata="false", limit=200)
    assert {e["PartitionName"] for e in default_entries} == {"default"}
    assert not {e["Sequence"] for e in default_entries} & {e["Sequence"] for e in _feed(a.base)}
