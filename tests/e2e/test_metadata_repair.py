"""Metadata objects are derived data: a missing or cut-short one is rebuilt from the DICOM file on read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from dicomd.ingest.metadata import encode, is_complete

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow
from support.server import Server, start_server, stop_server


def _metadata_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "objects" / "objects").glob("*/*.json"))


def _relative_bulk_uris(body: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    # the stored objects carry BulkDataURIs relative to the instance URL; responses make them absolute
    text = orjson.dumps(body).decode()
    return orjson.loads(text.replace(base, "BASE"))  # type: ignore[no-any-return]


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_metadata_is_rebuilt_from_the_dicom_file(fresh_server: Server, damage: str) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        assert stow(client, [make_instance(study=study, series=series, sop=sop)]).status_code == 200
        (path,) = _metadata_files(fresh_server.data_dir)
        intact = path.read_bytes()
        assert is_complete(intact)
        if damage == "truncated":
            path.write_bytes(intact[: len(intact) // 2])
        elif damage == "empty":
            path.write_bytes(b"")
        else:
            path.unlink()

        r = client.get(f"/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200, r.text
        prefix = f"{fresh_server.v2}/studies/{study}/series/{series}/instances/{sop}/"
        expected = orjson.loads(intact)
        for element in expected.values():
            if "BulkDataURI" in element:
                element["BulkDataURI"] = prefix + element["BulkDataURI"]
        assert r.json() == [expected]
        # and put back in place, complete, for the next reader; operators see it happened
        assert path.read_bytes() == intact
        assert "rebuilding metadata object" in fresh_server.log_path.read_text()


def test_change_feed_metadata_is_rebuilt_too(fresh_server: Server) -> None:
    sop = new_uid()
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        assert stow(client, [make_instance(sop=sop)]).status_code == 200
        (path,) = _metadata_files(fresh_server.data_dir)
        intact = path.read_bytes()
        path.write_bytes(intact[: len(intact) // 3])
        feed = client.get("/changefeed", params={"includeMetadata": "true"}).json()
        assert [e["SopInstanceUid"] for e in feed] == [sop]
        assert feed[0]["Metadata"] == orjson.loads(intact)
        assert path.read_bytes() == intact


def test_encoded_metadata_ends_with_the_marker_only() -> None:
    # a newline inside a value is escaped by the JSON encoder, so the marker is unambiguous
    blob = encode({"00081030": {"vr": "LO", "Value": ["line one\nline two}\n"]}})
    assert is_complete(blob)
    assert blob.count(b"\n") == 1
    assert not is_complete(blob[:-1])
    assert not is_complete(blob[: blob.index(b"}") + 1])


def test_objects_written_before_the_end_marker_are_kept_and_marked(fresh_server: Server) -> None:
    study = new_uid()
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        assert stow(client, [make_instance(study=study)]).status_code == 200
        (path,) = _metadata_files(fresh_server.data_dir)
        intact = path.read_bytes()
        unmarked = intact[:-1]
        path.write_bytes(unmarked)
        before = path.stat().st_ino
        r = client.get(f"/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200
        assert path.read_bytes() == intact  # marked (a new file with the same bytes), not rebuilt
        assert path.stat().st_ino != before
        assert "rebuilding metadata object" not in fresh_server.log_path.read_text()


def test_a_rebuilt_object_names_the_bulk_data_recorded_at_ingest(tmp_path: Path) -> None:
    """The bulk threshold may change between ingest and a rebuild: the rebuilt metadata must still
    name exactly the bulk data the index can serve."""
    data_dir = tmp_path / "data"
    study, series, sop = new_uid(), new_uid(), new_uid()
    document = bytes(range(256)) * 8  # 2,048 bytes: bulk data at the default threshold of 1,024
    palette = b"\x01\x02" * 300  # 600 bytes: inline at 1,024
    instance = make_instance(
        study=study,
        series=series,
        sop=sop,
        EncapsulatedDocument=document,
        RedPaletteColorLookupTableData=palette,
    )
    srv = start_server(data_dir, workers=1)
    try:
        with httpx.Client(base_url=srv.v2, timeout=30) as client:
            assert stow(client, [instance]).status_code == 200
    finally:
        stop_server(srv)
    (path,) = _metadata_files(data_dir)
    intact = orjson.loads(path.read_bytes())
    assert "BulkDataURI" in intact["00420011"] and "InlineBinary" in intact["00281201"]
    path.write_bytes(b"")

    srv = start_server(data_dir, workers=1, env={"DICOMD_BULK_THRESHOLD": "100"})
    try:
        with httpx.Client(base_url=srv.v2, timeout=30) as client:
            r = client.get(f"/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
            assert r.status_code == 200, r.text
            (rebuilt,) = r.json()
            assert rebuilt["00281201"] == intact["00281201"]  # still inline
            uri = rebuilt["00420011"]["BulkDataURI"]
            assert uri.endswith("/" + intact["00420011"]["BulkDataURI"])
            got = client.get(uri, headers={"Accept": "multipart/related; type=application/octet-stream"})
            assert got.status_code == 200
            assert document in got.content
    finally:
        stop_server(srv)


def test_metadata_of_an_instance_whose_objects_are_gone_is_a_404(fresh_server: Server) -> None:
    """What a delete leaves under a request once its grace period is over: the index row was read, then
    both objects went. Nothing to rebuild from: a 404, not a 500."""
    study = new_uid()
    with httpx.Client(base_url=fresh_server.v2, timeout=30) as client:
        assert stow(client, [make_instance(study=study)]).status_code == 200
        (path,) = _metadata_files(fresh_server.data_dir)
        path.unlink()
        path.with_suffix(".dcm").unlink()
        r = client.get(f"/studies/{study}/metadata", headers={"Accept": "application/dicom+json"})
        assert r.status_code == 404, r.text
        assert "deleted" in r.json()["message"]
