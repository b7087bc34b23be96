"""Helpers for tests of several `dicomd serve` replicas on one index and one object store: what was sent,
what the replicas answer, the v1 change feed read whole or paged while others write, SIGKILL of a
replica's process group, and the scenario of concurrent overlapping stores through every replica with
its checks (the same on a shared directory and on a cloud store)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

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
from support.server import Server, descendants

SOP_INSTANCE = "00080018"
INSTANCE_URL = "/studies/{study}/series/{series}/instances/{sop}"


@dataclass(frozen=True)
class Sent:
    study: str
    series: str
    sop: str
    data: bytes

    @property
    def url(self) -> str:
        return INSTANCE_URL.format(study=self.study, series=self.series, sop=self.sop)


def new_series(patient: str, count: int, **attributes: Any) -> list[Sent]:
    """``count`` new instances of one new series of a new study."""
    study, series = new_uid(), new_uid()
    sent = []
    for sop in [new_uid() for _ in range(count)]:
        data = make_instance(study=study, series=series, sop=sop, patient_id=patient, **attributes)
        sent.append(Sent(study, series, sop, data))
    return sent


def api_client(server: Server, version: str = "v2", timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/{version}", timeout=timeout)


def referenced_sops(response: httpx.Response) -> set[str]:
    return {item[REFERENCED_SOP_INSTANCE]["Value"][0] for item in referenced_items(response.json())}


def failed_sops(response: httpx.Response) -> list[str]:
    return [item[REFERENCED_SOP_INSTANCE]["Value"][0] for item in failed_items(response.json())]


def retrieve(client: httpx.Client, sent: Sent) -> bytes:
    """The instance's stored bytes (a WADO-RS instance retrieve of any transfer syntax: as sent)."""
    r = client.get(sent.url, headers={"Accept": DICOM_ANY})
    assert r.status_code == 200, r.text
    ((_, body),) = parse_multipart(r)
    return body


def feed_page(client: httpx.Client, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    r = client.get("/changefeed", params={"offset": offset, "limit": limit})
    assert r.status_code == 200, r.text
    entries: list[dict[str, Any]] = r.json()
    return entries


def whole_feed(v1: httpx.Client) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while page := feed_page(v1, entries[-1]["Sequence"] if entries else 0):
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
        with api_client(self.server, "v1") as v1:
            while True:
                stopping = self.stop.is_set()  # read before the page: one full pass after the writers end
                page = feed_page(v1, self.seen[-1] if self.seen else 0, 7)
                self.seen += [e["Sequence"] for e in page]
                if stopping and not page:
                    return
                if not page:
                    time.sleep(0.01)


def kill_group(server: Server) -> None:
    """SIGKILL a replica and every process under it at once (no clean-up of any kind)."""
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    server.process.wait()


@dataclass
class Overlap:
    """What ``store_overlapping`` stored: the instances the archive must hold (one version of each
    contested one: the acknowledged one), under one patient, and what a pager read meanwhile."""

    patient: str
    expected: dict[str, Sent] = field(default_factory=dict)
    paged: list[int] = field(default_factory=list)


def store_overlapping(servers: list[Server]) -> Overlap:
    """Three series sent through every replica at once in different orders (identical bytes: a success
    everywhere) and four contested instances with different bytes on each replica (one acknowledged, the
    others refused), while a pager reads the change feed of the first. Checks every answer."""
    overlap = Overlap(unique_id("REPL"))
    same = [sent for _ in range(3) for sent in new_series(overlap.patient, 8)]
    contested_study, contested_series = same[0].study, same[0].series
    contested_sops = [new_uid() for _ in range(4)]
    variants = [
        [
            Sent(
                contested_study,
                contested_series,
                sop,
                make_instance(
                    study=contested_study, series=contested_series, sop=sop, patient_id=overlap.patient,
                    patient_name=f"Doe^Variant{replica}",
                ),
            )
            for sop in contested_sops
        ]
        for replica in range(len(servers))
    ]  # fmt: skip
    answers: list[list[tuple[list[Sent], httpx.Response]]] = [[] for _ in servers]
    start = threading.Barrier(len(servers))

    def send(replica: int) -> None:
        order = random.Random(replica).sample(same, len(same))
        batches = [order[i : i + 4] for i in range(0, len(order), 4)]
        batches += [[variant] for variant in variants[replica]]
        with api_client(servers[replica]) as client:
            start.wait()
            for batch in batches:
                answers[replica].append((batch, stow(client, [s.data for s in batch])))

    pager = FeedPager(servers[0])
    pager.start()
    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pager.stop.set()
    pager.join(30)
    overlap.paged = pager.seen

    winners: dict[str, Sent] = {}
    for replica_answers in answers:
        for batch, response in replica_answers:
            if batch[0].sop in contested_sops:
                assert response.status_code in (200, 409), response.text
                if response.status_code == 200:
                    assert batch[0].sop not in winners, "two different versions were both acknowledged"
                    winners[batch[0].sop] = batch[0]
                else:
                    assert failed_sops(response) == [batch[0].sop]
            else:  # identical bytes, stored by whichever replica committed first: a success everywhere
                assert response.status_code == 200, response.text
                assert referenced_sops(response) == {s.sop for s in batch}
    assert set(winners) == set(contested_sops)
    overlap.expected = {s.sop: s for s in same} | winners
    return overlap


def assert_the_same_on_every_replica(servers: list[Server], overlap: Overlap) -> None:
    """QIDO finds exactly the expected instances, WADO returns their bytes exactly, and the change feed
    is the same sequence on every replica, with one Create per instance and nothing a pager missed."""
    feeds = []
    for server in servers:
        with api_client(server) as client, api_client(server, "v1") as v1:
            found = client.get("/instances", params={"PatientID": overlap.patient, "limit": 1000})
            assert found.status_code == 200
            assert sorted(i[SOP_INSTANCE]["Value"][0] for i in found.json()) == sorted(overlap.expected)
            for sent in overlap.expected.values():
                assert retrieve(client, sent) == sent.data
            feeds.append(whole_feed(v1))
    assert all(feed == feeds[0] for feed in feeds)
    mine = [e for e in feeds[0] if e["SopInstanceUid"] in overlap.expected]
    assert sorted(e["SopInstanceUid"] for e in mine) == sorted(overlap.expected)  # one Create each
    assert {e["Action"] for e in mine} == {"create"}
    sequences = [e["Sequence"] for e in feeds[0]]
    assert sequences == sorted(set(sequences))
    assert overlap.paged == sequences  # the pager, reading while the replicas wrote, missed nothing


def acknowledged_until_killed(victim: Server, least: int = 30) -> list[Sent]:
    """Store three-instance series through ``victim`` from four threads until at least ``least``
    instances were acknowledged (or 20 s passed), then SIGKILL its process group mid-ingest. Returns the
    acknowledged instances (the requests the kill cut short are not: their clients saw no answer)."""
    patient = unique_id("KILL")
    acknowledged: list[Sent] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with api_client(victim) as client:
            while not stop.is_set():
                batch = new_series(patient, 3)
                try:
                    r = stow(client, [s.data for s in batch])
                except httpx.HTTPError:
                    return  # the replica died under this request: not acknowledged
                if r.status_code == 200:
                    with lock:
                        acknowledged.extend(batch)

    senders = [threading.Thread(target=load) for _ in range(4)]
    for t in senders:
        t.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < least and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_group(victim)
    stop.set()
    for t in senders:
        t.join(30)
    assert len(acknowledged) >= least
    return acknowledged


def assert_retrievable_everywhere(servers: list[Server], sents: list[Sent]) -> None:
    """Every instance is retrieved byte for byte from every replica."""
    for server in servers:
        with api_client(server) as client:
            for sent in sents:
                assert retrieve(client, sent) == sent.data
