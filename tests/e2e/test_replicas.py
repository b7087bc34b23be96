"""Several stateless replicas on one PostgreSQL index and one object store: three `dicomd serve`
processes with the same --index-url and --storage-path and data directories of their own. Any replica
takes any request: concurrent overlapping stores end with one stored copy and a truthful answer to each
client, a delete is seen everywhere at once (cached metadata included), the v1 change feed is one
sequence a pager never misses an entry of, and a replica killed mid-ingest loses no acknowledged
instance and, after its restart and a sweep, leaves nothing orphaned in storage."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.startup import sweep_orphans
from dicomd.storage.local import LocalObjectStore

from support.backends import PG_URL, pg_schema_url
from support.dicom_files import make_instance, new_uid
from support.dicomweb import (
    DICOM_ANY,
    REFERENCED_SOP_INSTANCE,
    failed_items,
    parse_multipart,
    referenced_items,
    stow,
    unique_id,
)
from support.server import Server, descendants, start_server, stop_server

pytestmark = pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")

SOP_INSTANCE = "00080018"
INSTANCE_URL = "/studies/{study}/series/{series}/instances/{sop}"


@dataclass
class Cluster:
    index_url: str
    storage: Path
    servers: list[Server]
    root: Path

    def args(self) -> tuple[str, ...]:
        return ("--index-url", self.index_url, "--storage-path", str(self.storage))

    def start(self, number: int) -> Server:
        return start_server(self.root / f"replica{number}", *self.args(), workers=1)

    def settings(self) -> Settings:
        return Settings(
            data_dir=self.root / "sweeper", index_url=self.index_url, storage_path=str(self.storage)
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert PG_URL
    root = tmp_path_factory.mktemp("replicas")
    with pg_schema_url(PG_URL) as url:
        found = Cluster(url, root / "shared-objects", [], root)
        try:
            for number in range(3):  # started one after another: each migrates or finds the schema at head
                found.servers.append(found.start(number))
            yield found
        finally:
            for server in found.servers:
                if server.process.poll() is None:
                    stop_server(server)


@dataclass(frozen=True)
class Sent:
    study: str
    series: str
    sop: str
    data: bytes

    @property
    def url(self) -> str:
        return INSTANCE_URL.format(study=self.study, series=self.series, sop=self.sop)


def _client(server: Server, version: str = "v2") -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/{version}", timeout=30)


def _referenced(response: httpx.Response) -> set[str]:
    return {item[REFERENCED_SOP_INSTANCE]["Value"][0] for item in referenced_items(response.json())}


def _failed(response: httpx.Response) -> list[str]:
    return [item[REFERENCED_SOP_INSTANCE]["Value"][0] for item in failed_items(response.json())]


def _retrieve(client: httpx.Client, sent: Sent) -> bytes:
    r = client.get(sent.url, headers={"Accept": DICOM_ANY})
    assert r.status_code == 200, r.text
    ((_, body),) = parse_multipart(r)
    return body


def _feed(client: httpx.Client, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    r = client.get("/changefeed", params={"offset": offset, "limit": limit})
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()
    return entries


def _whole_feed(v1: httpx.Client) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while page := _feed(v1, entries[-1]["Sequence"] if entries else 0):
        entries += page
    return entries


class FeedPager(threading.Thread):
    """A v1 change-feed reader paging (offset = last sequence seen) while others write: what it collects
    must equal the whole feed read afterwards, i.e. no committed entry appears behind a page already read."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop = threading.Event()
        self.seen: list[int] = []

    def run(self) -> None:
        with _client(self.server, "v1") as v1:
            while True:
                stopping = self.stop.is_set()  # read before the page: one full pass after the writers end
                page = _feed(v1, self.seen[-1] if self.seen else 0, 7)
                self.seen += [e["Sequence"] for e in page]
                if stopping and not page:
                    return
                if not page:
                    time.sleep(0.01)


def test_concurrent_overlapping_stores_through_every_replica(cluster: Cluster) -> None:
    patient = unique_id("REPL")
    studies = [(new_uid(), new_uid()) for _ in range(3)]
    same = [
        Sent(study, series, sop, make_instance(study=study, series=series, sop=sop, patient_id=patient))
        for study, series in studies
        for sop in [new_uid() for _ in range(8)]
    ]
    # the same SOP instances with different bytes on each replica: one wins, the others are refused
    contested_study, contested_series = studies[0]
    contested_sops = [new_uid() for _ in range(4)]
    variants = [
        [
            Sent(
                contested_study,
                contested_series,
                sop,
                make_instance(
                    study=contested_study, series=contested_series, sop=sop, patient_id=patient,
                    patient_name=f"Doe^Variant{replica}",
                ),
            )
            for sop in contested_sops
        ]
        for replica in range(3)
    ]  # fmt: skip
    answers: list[list[tuple[list[Sent], httpx.Response]]] = [[] for _ in range(3)]
    start = threading.Barrier(3)

    def send(replica: int) -> None:
        order = random.Random(replica).sample(same, len(same))
        batches = [order[i : i + 4] for i in range(0, len(order), 4)]
        batches += [[variant] for variant in variants[replica]]
        with _client(cluster.servers[replica]) as client:
            start.wait()
            for batch in batches:
                answers[replica].append((batch, stow(client, [s.data for s in batch])))

    pager = FeedPager(cluster.servers[0])
    pager.start()
    threads = [threading.Thread(target=send, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pager.stop.set()
    pager.join(30)

    winners: dict[str, Sent] = {}
    for replica in range(3):
        for batch, response in answers[replica]:
            if batch[0].sop in contested_sops:
                assert response.status_code in (200, 409), response.text
                if response.status_code == 200:
                    assert batch[0].sop not in winners, "two different versions were both acknowledged"
                    winners[batch[0].sop] = batch[0]
                else:
                    assert _failed(response) == [batch[0].sop]
            else:  # identical bytes, stored by whichever replica committed first: a success everywhere
                assert response.status_code == 200, response.text
                assert _referenced(response) == {s.sop for s in batch}
    assert set(winners) == set(contested_sops)
    expected = {s.sop: s for s in same} | winners

    feeds = []
    for server in cluster.servers:
        with _client(server) as client, _client(server, "v1") as v1:
            found = client.get("/instances", params={"PatientID": patient, "limit": 1000})
            assert found.status_code == 200
            assert sorted(i[SOP_INSTANCE]["Value"][0] for i in found.json()) == sorted(expected)
            for sent in expected.values():
                assert _retrieve(client, sent) == sent.data
            feeds.append(_whole_feed(v1))
    assert feeds[0] == feeds[1] == feeds[2]
    mine = [e for e in feeds[0] if e["SopInstanceUid"] in expected]
    assert sorted(e["SopInstanceUid"] for e in mine) == sorted(expected)  # one Create each: stored once
    assert {e["Action"] for e in mine} == {"create"}
    sequences = [e["Sequence"] for e in feeds[0]]
    assert sequences == sorted(set(sequences))
    assert pager.seen == sequences  # the pager, reading while three replicas wrote, missed nothing


def test_a_delete_on_one_replica_is_seen_by_all_at_once(cluster: Cluster) -> None:
    study, series, patient = new_uid(), new_uid(), unique_id("REPL")
    sent = [
        Sent(study, series, sop, make_instance(study=study, series=series, sop=sop, patient_id=patient))
        for sop in (new_uid(), new_uid())
    ]
    with _client(cluster.servers[1]) as client:
        assert stow(client, [s.data for s in sent]).status_code == 200
    clients = [_client(server) for server in cluster.servers]
    try:
        for client in clients:  # every replica caches the study's metadata
            for _ in range(2):
                assert client.get(f"/studies/{study}/metadata").status_code == 200
        assert clients[2].delete(f"/studies/{study}").status_code in (200, 202, 204)
        for client in clients:
            assert client.get(f"/studies/{study}/metadata").status_code == 404
            assert client.get(f"/studies/{study}/series/{series}/metadata").status_code == 404
            assert client.get("/instances", params={"PatientID": patient}).json() == []
            assert client.get(sent[0].url, headers={"Accept": DICOM_ANY}).status_code == 404
    finally:
        for client in clients:
            client.close()


def _kill_group(server: Server) -> None:
    """SIGKILL a replica and every process under it at once (no clean-up of any kind)."""
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait()


def _stored_keys(storage: Path) -> set[str]:
    return {p.name.split(".", 1)[0] for p in (storage / "objects").rglob("*") if p.is_file()}


def _staged(storage: Path) -> list[Path]:
    return [p for p in (storage / "staging").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_a_replica_killed_mid_ingest_loses_no_acknowledged_instance(cluster: Cluster) -> None:
    victim = cluster.servers[2]
    patient = unique_id("KILL")
    acknowledged: list[Sent] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(number: int) -> None:
        with _client(victim) as client:
            while not stop.is_set():
                study, series = new_uid(), new_uid()
                sops = (new_uid(), new_uid(), new_uid())
                batch = [
                    Sent(
                        study,
                        series,
                        sop,
                        make_instance(study=study, series=series, sop=sop, patient_id=patient),
                    )
                    for sop in sops
                ]
                try:
                    r = stow(client, [s.data for s in batch])
                except httpx.HTTPError:
                    return  # the replica died under this request: not acknowledged
                if r.status_code == 200:
                    with lock:
                        acknowledged.extend(batch)

    senders = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in senders:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    _kill_group(victim)
    stop.set()
    for t in senders:
        t.join(30)
    assert len(acknowledged) >= 30

    cluster.servers[2] = cluster.start(2)  # its start-up recovers what the dead one had staged
    for server in cluster.servers:
        with _client(server) as client:
            for sent in acknowledged:
                assert _retrieve(client, sent) == sent.data

    # an object that reached the store without ever being committed (as an upload before a crash does)
    source = cluster.root / "orphan-source.dcm"
    source.write_bytes(acknowledged[0].data)
    store = LocalObjectStore(cluster.storage)
    orphan = store.new_key()
    store.stage_file(orphan, str(source))
    store.sync([orphan])
    store.publish([orphan])
    store.close()
    assert orphan in _stored_keys(cluster.storage)

    result = sweep_orphans(cluster.settings(), grace_period=0)  # the archive is idle now
    assert result is not None and result.removed >= 1
    stored = _stored_keys(cluster.storage)
    assert orphan not in stored
    index = Index(cluster.index_url)
    try:
        assert index.known_objects(stored) == stored  # nothing orphaned
    finally:
        index.close()
    assert _staged(cluster.storage) == []  # the dead replica's staging area was recovered
    with _client(cluster.servers[0]) as client:
        for sent in acknowledged:
            assert _retrieve(client, sent) == sent.data
