"""Change feed end to end: create/update/delete entries in commit order, states, v1 paging, v2 time window."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow, unique_id, value
from support.server import Server, start_server, stop_server


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[Server]:
    """An empty archive that overwrites duplicates (so that updates and replaced entries occur)."""
    srv = start_server(tmp_path / "data", "--duplicate-policy", "overwrite", workers=1)
    yield srv
    stop_server(srv)


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    r = client.get(path, params=params)
    assert r.status_code == 200, (path, params, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def _seqs(entries: list[dict[str, Any]]) -> list[int]:
    return [e["Sequence"] for e in entries]


def _time(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["Timestamp"].replace("Z", "+00:00"))


def test_changefeed_records_every_change_in_order(feed_server: Server) -> None:
    v1 = httpx.Client(base_url=feed_server.v1, timeout=30)
    v2 = httpx.Client(base_url=feed_server.v2, timeout=30)
    with v1, v2:
        assert _get(v2, "/changefeed") == []
        assert _get(v1, "/changefeed") == []
        r = v2.get("/changefeed/latest")
        assert r.status_code == 200

        study_a, series_a, study_b = new_uid(), new_uid(), new_uid()
        a1, a2, b1 = new_uid(), new_uid(), new_uid()
        patient = unique_id()
        parts = [make_instance(study=study_a, series=series_a, sop=s, patient_id=patient) for s in (a1, a2)]
        assert stow(v2, parts).status_code == 200
        time.sleep(0.02)
        assert stow(v2, [make_instance(study=study_b, sop=b1, patient_id=patient)]).status_code == 200
        time.sleep(0.02)

        entries = _get(v2, "/changefeed")
        assert _seqs(entries) == [1, 2, 3]
        assert {e["SopInstanceUid"] for e in entries[:2]} == {a1, a2}
        assert entries[2]["SopInstanceUid"] == b1
        assert entries[2]["StudyInstanceUid"] == study_b
        for e in entries:
            assert (e["Action"], e["State"]) == ("create", "current")
            assert value(e["Metadata"], "00080018") == e["SopInstanceUid"]
            assert value(e["Metadata"], "00100020") == patient
            assert e["PartitionName"] == "default"
        assert entries[0]["SeriesInstanceUid"] == series_a
        assert [_time(e) for e in entries] == sorted(_time(e) for e in entries)
        for e in _get(v2, "/changefeed", includemetadata="false"):
            assert "Metadata" not in e

        # overwrite a1: an update entry; the create entry of a1 is now replaced
        updated = make_instance(study=study_a, series=series_a, sop=a1, patient_id=patient, InstanceNumber=7)
        assert stow(v2, [updated]).status_code == 200
        time.sleep(0.02)
        # delete b1, then study A
        assert (
            v2.delete(
                f"/studies/{study_b}/series/{entries[2]['SeriesInstanceUid']}/instances/{b1}"
            ).status_code
            == 204
        )
        time.sleep(0.02)
        assert v2.delete(f"/studies/{study_a}").status_code == 204

        entries = _get(v2, "/changefeed")
        assert _seqs(entries) == [1, 2, 3, 4, 5, 6, 7]
        by_seq = {e["Sequence"]: e for e in entries}
        assert (by_seq[4]["Action"], by_seq[4]["SopInstanceUid"]) == ("update", a1)
        assert (by_seq[5]["Action"], by_seq[5]["SopInstanceUid"]) == ("delete", b1)
        assert {by_seq[6]["Action"], by_seq[7]["Action"]} == {"delete"}
        assert {by_seq[6]["SopInstanceUid"], by_seq[7]["SopInstanceUid"]} == {a1, a2}
        # everything is deleted now
        assert all(e["State"] == "deleted" for e in entries), [(e["Sequence"], e["State"]) for e in entries]
        assert all("Metadata" not in e for e in entries)
        latest = _get(v2, "/changefeed/latest")
        assert latest["Sequence"] == 7
        assert latest["Action"] == "delete"
        assert _get(v1, "/changefeed/latest")["Sequence"] == 7
        times = [_time(e) for e in entries]
        assert times == sorted(times)


def test_changefeed_states_and_metadata_while_current(feed_server: Server) -> None:
    with httpx.Client(base_url=feed_server.v2, timeout=30) as v2:
        study, series, sop = new_uid(), new_uid(), new_uid()
        assert (
            stow(v2, [make_instance(study=study, series=series, sop=sop, InstanceNumber=1)]).status_code
            == 200
        )
        assert (
            stow(v2, [make_instance(study=study, series=series, sop=sop, InstanceNumber=2)]).status_code
            == 200
        )
        first, second = _get(v2, "/changefeed")
        assert (first["Action"], first["State"]) == ("create", "replaced")
        assert "Metadata" not in first
        assert (second["Action"], second["State"]) == ("update", "current")
        assert value(second["Metadata"], "00200013") == 2
        latest = _get(v2, "/changefeed/latest", includemetadata="true")
        assert latest["Sequence"] == 2
        assert value(latest["Metadata"], "00200013") == 2
        assert "Metadata" not in _get(v2, "/changefeed/latest", includemetadata="false")


def test_changefeed_paging_and_time_window(feed_server: Server) -> None:
    v1 = httpx.Client(base_url=feed_server.v1, timeout=30)
    v2 = httpx.Client(base_url=feed_server.v2, timeout=30)
    with v1, v2:
        for _ in range(7):
            assert stow(v2, [make_instance()]).status_code == 200
            time.sleep(0.005)
        # v1: offset is the last sequence seen; pages are full while entries remain
        pages = []
        offset = 0
        while True:
            page = _get(v1, "/changefeed", offset=offset, limit=3)
            if not page:
                break
            pages.append(_seqs(page))
            offset = page[-1]["Sequence"]
        assert pages == [[1, 2, 3], [4, 5, 6], [7]]
        assert _seqs(_get(v1, "/changefeed")) == [1, 2, 3, 4, 5, 6, 7]  # default limit 10
        assert _seqs(_get(v1, "/changefeed", offset=5)) == [6, 7]

        # v2: time window [startTime, endTime), offset skips rows, limit caps them
        entries = _get(v2, "/changefeed")
        times = [_time(e) for e in entries]
        assert _seqs(entries) == [1, 2, 3, 4, 5, 6, 7]
        start = times[2].isoformat()
        assert _seqs(_get(v2, "/changefeed", startTime=start))[0] == 3
        if times[5] > times[4]:
            window = _get(v2, "/changefeed", startTime=start, endTime=times[5].isoformat())
            assert _seqs(window) == [3, 4, 5]
        assert _seqs(_get(v2, "/changefeed", offset=1, limit=2)) == [2, 3]
        assert _seqs(_get(v2, "/changefeed", startTime=start, offset=1, limit=2)) == [4, 5]
        later = (times[-1] + timedelta(seconds=60)).isoformat()
        assert _get(v2, "/changefeed", startTime=later) == []
        earlier = (times[0] - timedelta(days=1)).isoformat().replace("+00:00", "Z")
        assert _seqs(_get(v2, "/changefeed", startTime=earlier, endTime=later)) == [1, 2, 3, 4, 5, 6, 7]
