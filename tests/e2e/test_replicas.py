"""Several stateless replicas on one PostgreSQL index and one object store: three `dicomd serve`
processes with the same --index-url and --storage-path and data directories of their own. Any replica
takes any request: concurrent overlapping stores end with one stored copy and a truthful answer to each
client, a delete is seen everywhere at once (cached metadata included), the v1 change feed is one
sequence a pager never misses an entry of, and a replica killed mid-ingest loses no acknowledged
instance and, after its restart and a sweep, leaves nothing orphaned in storage."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomd.config import Settings
from dicomd.index.store import Index
from dicomd.startup import sweep_orphans
from dicomd.storage.local import LocalObjectStore

from support.backends import PG_URL, pg_schema_url
from support.dicom_files import make_instance, new_uid
from support.dicomweb import (
    DICOM_ANY,
    stow,
    unique_id,
)
from support.replicas import (
    Sent,
    acknowledged_until_killed,
    api_client,
    assert_retrievable_everywhere,
    assert_the_same_on_every_replica,
    retrieve,
    store_overlapping,
)
from support.server import Server, start_server, stop_server

pytestmark = pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")


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


def test_concurrent_overlapping_stores_through_every_replica(cluster: Cluster) -> None:
    assert_the_same_on_every_replica(cluster.servers, store_overlapping(cluster.servers))


def test_a_delete_on_one_replica_is_seen_by_all_at_once(cluster: Cluster) -> None:
    study, series, patient = new_uid(), new_uid(), unique_id("REPL")
    sent = [
        Sent(study, series, sop, make_instance(study=study, series=series, sop=sop, patient_id=patient))
        for sop in (new_uid(), new_uid())
    ]
    with api_client(cluster.servers[1]) as client:
        assert stow(client, [s.data for s in sent]).status_code == 200
    clients = [api_client(server) for server in cluster.servers]
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


def _stored_keys(storage: Path) -> set[str]:
    return {p.name.split(".", 1)[0] for p in (storage / "objects").rglob("*") if p.is_file()}


def _staged(storage: Path) -> list[Path]:
    return [p for p in (storage / "staging").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_a_replica_killed_mid_ingest_loses_no_acknowledged_instance(cluster: Cluster) -> None:
    acknowledged = acknowledged_until_killed(cluster.servers[2])

    cluster.servers[2] = cluster.start(2)  # its start-up recovers what the dead one had staged
    assert_retrievable_everywhere(cluster.servers, acknowledged)

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
    with api_client(cluster.servers[0]) as client:
        for sent in acknowledged:
            assert retrieve(client, sent) == sent.data
