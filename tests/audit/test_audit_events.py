"""The audit trail's events for store, search, retrieve and delete, with their outcomes (success, partial
failure, refusals, authentication), request ids, client audit headers, and the sink's file and failure
behaviour; on the application in the test's process (support/asgi.py), writing a real audit file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from dicomd.audit.middleware import AuditMiddleware
from dicomd.audit.sink import AuditSink
from dicomd.auth.api_keys import add_key
from dicomd.index.schema import DEFAULT_PARTITION_NAME

from support.asgi import in_process, settings_for
from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow_async, wait_for


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'index.db'}"


@contextlib.asynccontextmanager
async def _app(tmp_path: Path, **flags: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(settings_for(tmp_path / "data", _sqlite(tmp_path), **flags)) as client:
        yield client


def _audit_file(tmp_path: Path) -> Path:
    return tmp_path / "data" / "audit.jsonl"


def _events(path: Path, count: int) -> list[dict[str, Any]]:
    """The audit file's events, once it holds at least ``count`` (the writer is a thread)."""

    def lines() -> list[bytes]:
        return path.read_bytes().splitlines() if path.exists() else []

    assert wait_for(lambda: len(lines()) >= count, timeout=5), f"expected {count} events: {lines()}"
    return [orjson.loads(line) for line in lines()]


def _event_code(event: dict[str, Any]) -> tuple[str, str]:
    return event["event_id"]["code"], event["event_id"]["display"]


async def test_store_search_retrieve_delete_are_audited_with_what_they_touched(tmp_path: Path) -> None:
    study, series = new_uid(), new_uid()
    sops = [new_uid(), new_uid()]
    parts = [make_instance(study=study, series=series, sop=sop, patient_name="Audit^Alice") for sop in sops]
    async with _app(tmp_path) as client:
        stored = await stow_async(client, parts, **{"X-Request-ID": "stow-1"})
        assert stored.status_code == 200
        assert stored.headers["x-request-id"] == "stow-1"
        found = await client.get("/v2/studies", params={"PatientName": "Audit^A*", "limit": "5"})
        assert found.status_code == 200
        retrieved = await client.get(f"/v2/studies/{study}/series/{series}")
        assert retrieved.status_code == 200
        metadata = await client.get(f"/v2/studies/{study}/metadata")
        assert metadata.status_code == 200
        deleted = await client.delete(f"/v1/studies/{study}")
        assert deleted.status_code == 204
    store, search, retrieve, meta, delete = _events(_audit_file(tmp_path), 5)

    for event, response in zip(
        (store, search, retrieve, meta, delete), (stored, found, retrieved, metadata, deleted), strict=True
    ):
        assert event["outcome"] == 0 and event["completed"] is True
        assert event["status"] == response.status_code
        assert event["request_id"] == response.headers["x-request-id"]
        assert event["who"] == {"subject": "anonymous", "method": "anonymous"}
        assert event["client"]["address"] == "127.0.0.1"
        assert event["partition"] == DEFAULT_PARTITION_NAME
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", event["time"])

    assert _event_code(store) == ("110107", "Import") and store["action"] == "C"
    assert store["route"] == "stow.store" and store["method"] == "POST"
    assert store["request_id"] == "stow-1"
    assert sorted(item["instance"] for item in store["stored"]) == sorted(sops)
    assert {(i["study"], i["series"], i["sop_class"]) for i in store["stored"]} == {
        (study, series, "1.2.840.10008.5.1.4.1.1.2")
    }
    assert store["failed"] == []

    assert _event_code(search) == ("110112", "Query") and search["action"] == "E"
    assert search["route"] == "qido.search_studies"
    assert search["query"] == [["PatientName", "Audit^A*"], ["limit", "5"]]
    assert search["results"] == 1
    assert re.fullmatch(r"[0-9a-f]{32}", search["request_id"])  # generated

    assert _event_code(retrieve) == ("110104", "DICOM Instances Transferred") and retrieve["action"] == "R"
    assert retrieve["route"] == "wado.retrieve_series"
    assert (retrieve["study"], retrieve["series"]) == (study, series) and "instance" not in retrieve
    assert retrieve["instances"] == 2
    assert retrieve["response_bytes"] == len(retrieved.content)

    assert _event_code(meta) == ("110103", "DICOM Instances Accessed") and meta["action"] == "R"
    assert meta["route"] == "wado.retrieve_study_metadata" and meta["instances"] == 2

    assert _event_code(delete) == ("110105", "DICOM Study Deleted") and delete["action"] == "D"
    assert delete["route"] == "delete.study" and delete["study"] == study
    assert delete["deleted_instances"] == 2


async def test_failures_have_their_outcome_and_what_was_attempted(tmp_path: Path) -> None:
    study = new_uid()
    good_sop, missing = new_uid(), new_uid()
    async with _app(tmp_path) as client:
        partial = await stow_async(client, [make_instance(study=study, sop=good_sop), b"not DICOM"])
        assert partial.status_code == 202
        refused = await stow_async(client, [b"still not DICOM"])
        assert refused.status_code == 409
        wrong_type = await client.post("/v2/studies", content=b"x", headers={"Content-Type": "text/plain"})
        assert wrong_type.status_code == 415
        bad_query = await client.get("/v2/studies", params={"StudyDate": "yesterday"})
        assert bad_query.status_code == 400
        not_there = await client.get(f"/v2/studies/{missing}")
        assert not_there.status_code == 404
        not_deleted = await client.delete(f"/v2/studies/{missing}/series/{new_uid()}")
        assert not_deleted.status_code == 404
        wrong_method = await client.put(f"/v2/studies/{study}")
        assert wrong_method.status_code == 405
    events = _events(_audit_file(tmp_path), 7)
    partial_e, refused_e, wrong_type_e, bad_query_e, not_there_e, not_deleted_e, wrong_method_e = events

    assert (partial_e["outcome"], partial_e["status"]) == (4, 202)  # minor failure: some were stored
    assert [i["instance"] for i in partial_e["stored"]] == [good_sop]
    assert len(partial_e["failed"]) == 1 and partial_e["failed"][0]["failure_reason"] == 0x0110

    assert (refused_e["outcome"], refused_e["status"]) == (8, 409)
    assert refused_e["stored"] == [] and len(refused_e["failed"]) == 1
    assert (wrong_type_e["outcome"], wrong_type_e["status"]) == (8, 415)
    assert _event_code(wrong_type_e)[0] == "110107"

    assert (bad_query_e["outcome"], bad_query_e["status"]) == (8, 400)
    assert bad_query_e["query"] == [["StudyDate", "yesterday"]] and "results" not in bad_query_e

    assert (not_there_e["outcome"], not_there_e["status"]) == (8, 404)
    assert not_there_e["study"] == missing and "instances" not in not_there_e
    assert _event_code(not_deleted_e)[0] == "110105"
    assert (not_deleted_e["outcome"], not_deleted_e["deleted_instances"]) == (8, 0)

    # no route takes PUT: the event says what the method attempted, on which study
    assert (wrong_method_e["outcome"], wrong_method_e["status"]) == (8, 405)
    assert wrong_method_e["route"] is None and wrong_method_e["study"] == study
    assert wrong_method_e["action"] == "U"


async def test_refused_callers_are_audited_with_who_and_what_they_asked_for(tmp_path: Path) -> None:
    keys = tmp_path / "keys.jsonl"
    reader = add_key(keys, "viewer-station", ("Data Reader",), None)
    study = new_uid()
    async with _app(tmp_path, api_keys_file=str(keys)) as client:
        anonymous = await client.get(f"/v2/studies/{study}/metadata")
        assert anonymous.status_code == 401
        wrong_key = await client.delete(f"/v2/studies/{study}", headers={"X-API-Key": "dicomd_nope"})
        assert wrong_key.status_code == 401
        forbidden = await client.delete(f"/v2/studies/{study}", headers={"X-API-Key": reader})
        assert forbidden.status_code == 403
        allowed = await client.get("/v2/studies", headers={"Authorization": f"ApiKey {reader}"})
        assert allowed.status_code == 200
    anonymous_e, wrong_key_e, forbidden_e, allowed_e = _events(_audit_file(tmp_path), 4)

    assert (anonymous_e["outcome"], anonymous_e["status"], anonymous_e["who"]) == (8, 401, None)
    # refused before routing, yet the event names the route and the study asked for
    assert anonymous_e["route"] == "wado.retrieve_study_metadata" and anonymous_e["study"] == study
    assert _event_code(anonymous_e)[0] == "110103"
    assert (wrong_key_e["status"], wrong_key_e["route"], wrong_key_e["study"]) == (401, "delete.study", study)
    assert _event_code(wrong_key_e)[0] == "110105" and wrong_key_e["action"] == "D"

    assert (forbidden_e["outcome"], forbidden_e["status"]) == (8, 403)
    assert (forbidden_e["who"]["subject"], forbidden_e["who"]["method"]) == ("viewer-station", "api-key")
    assert forbidden_e["route"] == "delete.study" and "deleted_instances" not in forbidden_e

    assert (allowed_e["outcome"], allowed_e["who"]["subject"]) == (0, "viewer-station")
    text = _audit_file(tmp_path).read_text()
    assert reader not in text and "dicomd_nope" not in text  # credentials are never recorded


async def test_request_ids_are_taken_when_sane_else_generated(tmp_path: Path) -> None:
    sane = "a" * 128
    async with _app(tmp_path) as client:
        responses = [
            await client.get("/v2/studies", headers={"X-Request-ID": value})
            for value in (sane, "a" * 129, "has space", "trace-7f:1/2+3=4@x~y_z.")
        ]
        health = await client.get("/health/check", headers={"X-Request-ID": "h-1"})
    echoed = [r.headers["x-request-id"] for r in responses]
    assert echoed[0] == sane and echoed[3] == "trace-7f:1/2+3=4@x~y_z."
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in echoed[1:3])
    assert "x-request-id" not in health.headers
    events = _events(_audit_file(tmp_path), 4)
    assert [e["request_id"] for e in events] == echoed
    assert len(events) == 4  # /health is not audited


async def test_client_audit_headers_pass_through_cleaned_and_bounded(tmp_path: Path) -> None:
    async with _app(tmp_path, audit_header_bytes=100) as client:
        await client.get(
            "/v2/studies",
            headers={
                "X-MS-AZUREDICOM-AUDIT-USERID": "dr.who",
                "X-DICOMD-Audit-Reason": "second\topinion\x7f",
                "X-Other": "not an audit header",
            },
        )
        await client.get("/v2/studies", headers={b"X-DICOMD-AUDIT-NOTE": "é".encode() * 100})
        await client.get("/v2/studies")
    cleaned, cut, none = _events(_audit_file(tmp_path), 3)
    assert cleaned["client_audit"] == {
        "headers": {"x-ms-azuredicom-audit-userid": "dr.who", "x-dicomd-audit-reason": "secondopinion"}
    }
    note = cut["client_audit"]["headers"]["x-dicomd-audit-note"]
    assert cut["client_audit"]["truncated"] is True
    assert note == "é" * ((100 - len("x-dicomd-audit-note")) // 2)  # whole characters within the budget
    assert "client_audit" not in none


async def test_audit_file_is_owner_only_and_appended(tmp_path: Path) -> None:
    async with _app(tmp_path) as client:
        await client.get("/v2/studies")
    async with _app(tmp_path) as client:  # a restart appends
        await client.get("/v2/changefeed")
        await client.get("/v2/api.json")  # no PHI: not audited
    path = _audit_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    events = _events(path, 2)
    assert [e["route"] for e in events] == ["qido.search_studies", "changefeed.changes"]


async def test_audit_off_writes_nothing_but_ids_requests(tmp_path: Path) -> None:
    async with _app(tmp_path, audit_log="off") as client:
        response = await client.get("/v2/studies")
    assert response.status_code == 200 and response.headers["x-request-id"]
    assert not _audit_file(tmp_path).exists()
    assert not list((tmp_path / "data").glob("*.jsonl"))


async def test_an_audit_log_that_cannot_be_opened_fails_the_start(tmp_path: Path) -> None:
    target = tmp_path / "no such directory" / "audit.jsonl"
    with pytest.raises(RuntimeError, match="audit log"):
        async with _app(tmp_path, audit_log=str(target)):
            pass


async def test_an_audit_trail_that_cannot_be_written_closes_the_api(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /dev/full: every write fails with ENOSPC, as on a full disk
    caplog.set_level(logging.WARNING, logger="dicomd.audit")
    study = new_uid()
    async with _app(tmp_path, audit_log="/dev/full") as client:
        first = await client.get(f"/v2/studies/{study}/metadata")
        assert first.status_code == 404  # answered before its event failed to be written

        async def refused() -> bool:
            response = await client.get("/v2/studies")
            return response.status_code == 503

        for _ in range(50):
            if await refused():
                break
            await asyncio.sleep(0.1)
        response = await client.get("/v2/studies")
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["message"] == "the audit trail cannot be written; try again later"
        assert (await client.get("/health/check")).status_code == 200
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dicomd.audit")]
    assert any("ENOSPC" in m for m in messages), messages
    assert not any(study in m for m in messages)


def test_the_sink_writes_every_queued_line_before_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "sink.jsonl"
    sink = AuditSink(str(path))
    sink.open()
    lines = [orjson.dumps({"n": n, "pad": "x" * (n % 700)}) + b"\n" for n in range(5000)]
    for line in lines:
        sink.write(line)
    sink.close()
    assert path.read_bytes() == b"".join(lines)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_standard_output_gets_the_events_with_a_dash(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async with _app(tmp_path, audit_log="-") as client:
        response = await client.get("/v2/studies", headers={"X-Request-ID": "to-stdout"})
    printed = [orjson.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["request_id"] for e in printed] == [response.headers["x-request-id"]] == ["to-stdout"]
    assert not _audit_file(tmp_path).exists()


async def test_an_application_error_is_a_major_failure(tmp_path: Path) -> None:
    """What Starlette answers with 500 (a bug) reaches the audit middleware as an exception, before or
    after the response started."""

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].endswith("/late"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("a bug")

    async def sent(message: Message) -> None:
        pass

    async def received() -> Message:
        return {"type": "http.request", "body": b""}

    sink = AuditSink(str(tmp_path / "audit.jsonl"))
    sink.open()
    middleware = AuditMiddleware(failing, sink, 1024)
    for path in (f"/v2/studies/{new_uid()}", "/v2/studies/1.2.3/late"):
        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
        with pytest.raises(ValueError):
            await middleware(scope, received, sent)
    sink.close()
    early, late = _events(tmp_path / "audit.jsonl", 2)
    assert (early["outcome"], early["status"], early["route"]) == (12, 500, "wado.retrieve_study")
    assert (late["outcome"], late["status"], late["completed"], late["response_bytes"]) == (12, 200, False, 4)


async def test_the_partition_list_is_not_audited_but_a_partitioned_search_is(tmp_path: Path) -> None:
    async with _app(tmp_path, partitions="true") as client:
        assert (await client.get("/v2/partitions")).status_code == 200
        assert (await client.get("/v2/partitions/default/studies")).status_code in (200, 204)
    (search,) = _events(_audit_file(tmp_path), 1)
    assert (search["route"], search["partition"]) == ("qido.search_studies", "default")


async def test_rendered_thumbnail_and_wado_uri_are_audited_as_instance_access(tmp_path: Path) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    async with _app(tmp_path) as client:
        assert (
            await stow_async(client, [make_instance(study=study, series=series, sop=sop)])
        ).status_code == 200
        instance = f"/v2/studies/{study}/series/{series}/instances/{sop}"
        assert (await client.get(instance + "/rendered")).status_code == 200
        assert (await client.get(f"/v2/studies/{study}/thumbnail")).status_code == 200
        uri = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
        assert (await client.get("/v2/wado", params=uri)).status_code == 200
    _, rendered, thumbnail, wado_uri = _events(_audit_file(tmp_path), 4)
    for event, route in (
        (rendered, "rendered.instance"),
        (thumbnail, "rendered.thumbnail_study"),
        (wado_uri, "wado_uri.wado"),
    ):
        assert _event_code(event) == ("110103", "DICOM Instances Accessed") and event["action"] == "R"
        assert event["route"] == route and event["outcome"] == 0 and event["study"] == study
    assert (rendered["series"], rendered["instance"]) == (series, sop)
    # WADO-URI names its UIDs in the query: the handler reports them
    assert (wado_uri["series"], wado_uri["instance"], wado_uri["instances"]) == (series, sop, 1)
