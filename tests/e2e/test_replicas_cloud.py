"""Three stateless replicas on one PostgreSQL index and one S3 bucket (moto), each with its own data
directory (its staging area): concurrent overlapping stores through all three read back the same
everywhere; a replica killed mid-ingest loses no acknowledged instance and, after its restart and a
sweep, leaves nothing in the bucket that the index does not name; an outage of the object store under
load gives clients 503 with Retry-After (never a 500, never a hang, never a lost acknowledged instance)
and the replicas recover by themselves.

The replicas reach moto through a TCP relay that the test cuts and restores: moto keeps its objects in
memory, so the outage must not be a restart of moto itself."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.store import from_url

from dicomd.dicom.status import OUT_OF_RESOURCES
from dicomd.index.store import Index
from dicomd.storage.local import is_object_name, new_key

from support.backends import PG_URL, pg_schema_url
from support.dicomweb import DICOM_ANY, FAILURE_REASON, failed_items, stow, unique_id, value
from support.emulators import S3_REGION, Emulator
from support.relay import Relay
from support.replicas import (
    SOP_INSTANCE,
    Sent,
    acknowledged_until_killed,
    api_client,
    assert_retrievable_everywhere,
    assert_the_same_on_every_replica,
    new_series,
    referenced_sops,
    retrieve,
    store_overlapping,
)
from support.server import Server, descendants, start_server, stop_server

pytestmark = pytest.mark.skipif(not PG_URL, reason="DICOMD_TEST_POSTGRES_URL not set")

PREFIX = "archive"
STORAGE_TIMEOUT = 2  # seconds: an outage answers quickly


@dataclass
class CloudCluster:
    index_url: str
    storage_url: str  # s3://bucket/prefix
    options: str  # storage_options through the relay (credentials: moto's dummies)
    emulator: Emulator  # moto itself, for looking at the bucket behind the replicas' backs
    relay: Relay
    root: Path
    servers: list[Server]

    def args(self) -> tuple[str, ...]:
        return (
            "--index-url", self.index_url, "--storage-url", self.storage_url,
            "--storage-timeout", str(STORAGE_TIMEOUT),
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        return {"DICOMD_STORAGE_OPTIONS": self.options}  # credentials stay off the command line

    def start(self, number: int) -> Server:
        return start_server(self.root / f"replica{number}", *self.args(), workers=1, env=self.env())

    def bucket_keys(self) -> set[str]:
        """The keys of the objects in the bucket under the archive's prefix, listed directly on moto."""
        bucket = self.storage_url.split("/")[2]
        store = from_url(
            f"s3://{bucket}",
            config={
                "endpoint": self.emulator.endpoint, "region": S3_REGION,
                "access_key_id": "testing", "secret_access_key": "testing",
            },
            client_options={"allow_http": True},
        )  # fmt: skip
        keys = set()
        for page in obstore.list(store, prefix=PREFIX):
            for meta in page:
                fan_out, _, name = meta["path"].removeprefix(f"{PREFIX}/").rpartition("/")
                assert is_object_name(fan_out, name), meta["path"]  # nothing else under the prefix
                keys.add(name.split(".", 1)[0])
        return keys

    def put_orphan(self) -> str:
        """An object in the bucket that no index row names (what a crash between upload and commit
        leaves); its key."""
        bucket = self.storage_url.split("/")[2]
        key = new_key()
        r = httpx.put(f"{self.emulator.endpoint}/{bucket}/{PREFIX}/{key[:3]}/{key}.dcm", content=b"orphan")
        r.raise_for_status()
        return key


@pytest.fixture(scope="module")
def cluster(s3_emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudCluster]:
    assert PG_URL
    root = tmp_path_factory.mktemp("cloud-replicas")
    storage_url, options = s3_emulator.new_store(PREFIX)
    moto_port = int(s3_emulator.endpoint.rsplit(":", 1)[1])
    relay = Relay(("127.0.0.1", moto_port))
    relayed = options.replace(s3_emulator.endpoint, f"http://{relay.address}")
    assert relayed != options
    with pg_schema_url(PG_URL) as url:
        found = CloudCluster(url, storage_url, relayed, s3_emulator, relay, root, [])
        try:
            for number in range(3):  # one after another: each migrates or finds the schema at head
                found.servers.append(found.start(number))
            yield found
        finally:
            for server in found.servers:
                if server.process.poll() is None:
                    stop_server(server)
            relay.close()


def _staged(server: Server) -> list[Path]:
    staging = server.data_dir / "staging"
    return [p for p in staging.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_concurrent_overlapping_stores_read_back_the_same_on_every_replica(cluster: CloudCluster) -> None:
    overlap = store_overlapping(cluster.servers)
    assert_the_same_on_every_replica(cluster.servers, overlap)
    index = Index(cluster.index_url)
    try:
        stored = cluster.bucket_keys()
        assert stored and index.known_objects(stored) == stored  # stored once: no duplicate uploads left
    finally:
        index.close()


def test_a_replica_killed_mid_ingest_loses_nothing_and_the_sweep_leaves_no_orphan(
    cluster: CloudCluster,
) -> None:
    acknowledged = acknowledged_until_killed(cluster.servers[2])

    cluster.servers[2] = cluster.start(2)  # its start-up recovers what the dead one had staged
    assert_retrievable_everywhere(cluster.servers, acknowledged)

    orphan = cluster.put_orphan()
    assert orphan in cluster.bucket_keys()
    sweep = subprocess.run(
        [
            sys.executable, "-m", "dicomd", "sweep", "--data-dir", str(cluster.root / "sweeper"),
            "--index-url", cluster.index_url, "--storage-url", cluster.storage_url, "--older-than", "0",
        ],
        capture_output=True, text=True, timeout=60, env={**os.environ, **cluster.env()},
    )  # fmt: skip  # the archive is idle now: no upload is about to be committed
    assert sweep.returncode == 0, sweep.stderr
    assert sweep.stdout.startswith("removed "), sweep.stdout
    assert int(sweep.stdout.split()[1]) >= 1

    stored = cluster.bucket_keys()
    assert orphan not in stored
    index = Index(cluster.index_url)
    try:
        assert index.known_objects(stored) == stored  # nothing orphaned
    finally:
        index.close()
    for server in cluster.servers:
        assert _staged(server) == []  # the dead replica's staging area was recovered at its restart
    with api_client(cluster.servers[0]) as client:
        for sent in acknowledged:
            assert retrieve(client, sent) == sent.data


def _indexed_sops(client: httpx.Client, patient: str) -> set[str]:
    found: set[str] = set()
    while True:
        r = client.get("/instances", params={"PatientID": patient, "limit": 500, "offset": len(found)})
        assert r.status_code in (200, 204), r.text
        page = {i[SOP_INSTANCE]["Value"][0] for i in r.json()} if r.status_code == 200 else set()
        found |= page
        if len(page) < 500:
            return found


@dataclass(frozen=True)
class Answer:
    replica: int
    started: float
    ended: float
    status: int
    retry_after: str | None
    batch: list[Sent]
    referenced: set[str]
    failure_reasons: set[int]


def test_an_object_store_outage_under_load_gives_503_and_recovers_by_itself(cluster: CloudCluster) -> None:
    servers = cluster.servers
    workers_before = [descendants(server.process.pid) for server in servers]
    patient = unique_id("OUTAGE")
    answers: list[Answer] = []
    lock = threading.Lock()
    stop = threading.Event()
    give_up = time.monotonic() + 60  # bounded whatever happens

    def load(replica: int) -> None:
        with api_client(servers[replica]) as client:
            for _ in range(200):
                if stop.is_set() or time.monotonic() > give_up:
                    return
                batch = new_series(patient, 2)
                started = time.monotonic()
                r = stow(client, [s.data for s in batch])
                ended = time.monotonic()
                body = r.json() if r.headers.get("content-type", "").endswith("json") else {}
                answer = Answer(
                    replica, started, ended, r.status_code, r.headers.get("retry-after"), batch,
                    referenced_sops(r) if r.status_code in (200, 202) else set(),
                    {value(item, FAILURE_REASON) for item in failed_items(body)} if body else set(),
                )  # fmt: skip
                with lock:
                    answers.append(answer)
                time.sleep(0.02)

    def acknowledged() -> list[Sent]:
        with lock:
            return [s for a in answers for s in a.batch if s.sop in a.referenced]

    senders = [threading.Thread(target=load, args=(n % 3,)) for n in range(6)]
    for t in senders:
        t.start()
    try:
        deadline = time.monotonic() + 15
        while len(acknowledged()) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = acknowledged()
        assert len(before) >= 12, [a.status for a in answers]

        cluster.relay.cut()
        cut_at = time.monotonic()
        time.sleep(4)
        cluster.relay.restore()
        restored_at = time.monotonic()

        def recovered() -> set[int]:
            with lock:
                return {a.replica for a in answers if a.started > restored_at and a.status == 200}

        while recovered() != {0, 1, 2} and time.monotonic() < restored_at + 20:
            time.sleep(0.05)
        assert recovered() == {0, 1, 2}, "a replica did not recover within 20 s of the store's return"
    finally:
        cluster.relay.restore()
        stop.set()
        for t in senders:
            t.join(60)
    assert not any(t.is_alive() for t in senders)

    statuses = {a.status for a in answers}
    assert statuses <= {200, 202, 503}, sorted(statuses)  # never a 500
    during = [a for a in answers if a.started > cut_at + 0.1 and a.ended < restored_at]
    assert during and all(a.status == 503 for a in during), [a.status for a in during]
    for a in answers:
        assert a.ended - a.started < 15, "a store hung beyond the storage timeout"
        if a.status == 503:
            assert a.retry_after and a.failure_reasons == {OUT_OF_RESOURCES}
        if a.status == 202:  # truthful: what it refused failed for want of the store
            assert a.failure_reasons == {OUT_OF_RESOURCES}
    # the replicas recovered by themselves: the same worker processes throughout
    assert [descendants(server.process.pid) for server in servers] == workers_before

    stored = acknowledged()
    refused = {s.sop for a in answers for s in a.batch if s.sop not in a.referenced}
    assert refused, "the outage refused nothing"
    for server in servers:
        with api_client(server) as client:
            for sent in stored:
                assert retrieve(client, sent) == sent.data
            assert _indexed_sops(client, patient) == {s.sop for s in stored}  # nothing refused was kept


@pytest.mark.parametrize(
    ("resource", "accept"),
    [
        ("/metadata", "application/dicom+json"),
        ("/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
        pytest.param("", DICOM_ANY, id="instance-multipart"),
        pytest.param("", "application/dicom", id="instance-single"),
    ],
)
def test_a_read_during_an_object_store_outage_is_503_with_retry_after(
    cluster: CloudCluster, resource: str, accept: str
) -> None:
    (sent,) = new_series(unique_id("READ"), 1)
    with api_client(cluster.servers[1]) as client:
        assert stow(client, [sent.data]).status_code == 200
        cluster.relay.cut()
        try:
            started = time.monotonic()
            r = client.get(sent.url + resource, headers={"Accept": accept})
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert time.monotonic() - started < 15
        finally:
            cluster.relay.restore()
        r = client.get(sent.url + resource, headers={"Accept": accept})  # and back at once
        assert r.status_code == 200, r.text
